//! `kubectl qpm`: the binary started through a symlink named `kubectl-qpm` (as krew or a user
//! installs it on PATH) names itself `kubectl qpm` in help, usage and errors, keeps `plan`,
//! `apply`, `import` and `check`, and runs them; `deploy/krew/qpm.yaml.tmpl` installs it under that
//! name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A folder holding `kubectl-qpm` → the built binary.
fn plugin_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qpm-kubectl-plugin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_qpm-operator"), dir.join("kubectl-qpm"))
        .unwrap();
    dir
}

fn run(plugin: &Path, args: &[&str]) -> Output {
    Command::new(plugin.join("kubectl-qpm"))
        .args(args)
        .current_dir(repo())
        // No gateway from the environment of whoever runs the tests.
        .env_remove("QUALYS_GATEWAY_URL")
        .env_remove("QUALYS_USERNAME")
        .env_remove("QUALYS_PASSWORD")
        .env("XDG_STATE_HOME", plugin)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

#[test]
fn as_kubectl_qpm_it_names_itself_kubectl_qpm() {
    let dir = plugin_dir();

    let help = run(&dir, &["--help"]);
    assert!(help.status.success());
    let help = text(&help.stdout);
    assert!(help.contains("\nUsage: kubectl qpm <COMMAND>\n"), "{help}");
    let commands: Vec<&str> = help
        .split_once("Commands:\n")
        .unwrap()
        .1
        .lines()
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // The controller, the simulator and the CRD printer are no kubectl verbs.
    assert_eq!(commands, ["plan", "apply", "import", "check", "help"]);

    let plan_help = text(&run(&dir, &["plan", "--help"]).stdout);
    assert!(
        plan_help.contains("\nUsage: kubectl qpm plan [OPTIONS]"),
        "{plan_help}"
    );
    assert_eq!(
        text(&run(&dir, &["--version"]).stdout),
        format!("kubectl qpm {}\n", env!("CARGO_PKG_VERSION"))
    );

    let wrong = run(&dir, &["bogus"]);
    assert_eq!(wrong.status.code(), Some(2));
    let err = text(&wrong.stderr);
    assert!(err.contains("unrecognized subcommand 'bogus'"), "{err}");
    assert!(err.contains("\nUsage: kubectl qpm <COMMAND>\n"), "{err}");

    // A subcommand runs as it does under its own name: a plan of the examples against the
    // embedded simulator (asked for with --sim where the binary has that flag).
    let mut args = vec!["plan", "-f", "examples/"];
    if plan_help.contains("--sim ") || plan_help.contains("--sim\n") {
        args.insert(1, "--sim");
    }
    let plan = run(&dir, &args);
    assert_eq!(plan.status.code(), Some(2), "{}", text(&plan.stderr));
    assert!(
        text(&plan.stdout).ends_with("4 to create, 0 to update, 0 unchanged, 0 error(s)\n"),
        "{}",
        text(&plan.stdout)
    );

    // Under its own name nothing changes.
    let own = Command::new(env!("CARGO_BIN_EXE_qpm-operator"))
        .arg("--help")
        .output()
        .unwrap();
    let own = text(&own.stdout);
    assert!(own.contains("\nUsage: qpm-operator <COMMAND>\n"), "{own}");
    assert!(own.contains("\n  run "), "{own}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_krew_manifest_installs_the_binary_as_kubectl_qpm() {
    let template = std::fs::read_to_string(repo().join("deploy/krew/qpm.yaml.tmpl")).unwrap();
    let filled = template
        .replace("${VERSION}", env!("CARGO_PKG_VERSION"))
        .replace("${SHA256_LINUX_AMD64}", &"a".repeat(64))
        .replace("${SHA256_LINUX_ARM64}", &"b".repeat(64));
    assert!(!filled.contains("${"), "a placeholder is left: {filled}");
    let doc = qpm_operator::api::validate::yaml_documents(&filled)
        .unwrap()
        .remove(0);
    assert_eq!(
        doc["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(doc["kind"], "Plugin");
    // krew derives the command from the name: `kubectl qpm`.
    assert_eq!(doc["metadata"]["name"], "qpm");
    assert_eq!(
        doc["spec"]["version"],
        format!("v{}", env!("CARGO_PKG_VERSION"))
    );
    let platforms = doc["spec"]["platforms"].as_array().unwrap();
    assert_eq!(platforms.len(), 2);
    for p in platforms {
        assert_eq!(p["bin"], "kubectl-qpm");
        assert_eq!(
            p["files"],
            serde_json::json!([{"from": "qpm-operator", "to": "kubectl-qpm"}])
        );
        assert_eq!(p["selector"]["matchLabels"]["os"], "linux");
        assert_eq!(p["sha256"].as_str().unwrap().len(), 64);
        let arch = p["selector"]["matchLabels"]["arch"].as_str().unwrap();
        assert!(
            p["uri"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/qpm-operator-linux-{arch}.tar.gz")),
            "{p}"
        );
    }
}
