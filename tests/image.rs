//! The operator image: `scripts/image.sh` builds the Dockerfile's runtime layout FROM scratch with
//! podman (no registry pull), and the binary must run in it as the non-root user 65532 from a
//! read-only root filesystem — as the Deployment runs it.
//!
//! - `the_dockerfile_and_the_image_script_agree`: USER, ENTRYPOINT, CMD, EXPOSE and LABELs of the
//!   Dockerfile's final stage and of the script's Containerfile are the same (no podman needed).
//! - `the_image_runs_as_non_root_on_a_read_only_root`: builds the image, mounts it (`podman image
//!   mount`, read-only), checks its files (exactly the binary, the libraries `ldd` names, the CA
//!   bundle, passwd and group; nothing writable by 65532), then runs `--version`, `crd` and an
//!   `apply` of `examples/` inside it with `chroot --userspec=65532:65532` (`podman run` is refused
//!   by some sandboxes' rlimits; a chroot needs none of that). Skipped, saying why, without podman,
//!   without root, or without a built binary. It uses the newer of `target/release` and
//!   `target/debug` (`QPM_IMAGE_BINARY` overrides) and prints which, with the image size.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const USER_ID: u32 = 65532;
/// The goal for an image of the release binary.
const RELEASE_IMAGE_LIMIT: u64 = 40 * 1024 * 1024;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile and the script in step

/// The runtime directives of a Dockerfile-syntax text, from its last `FROM` on: continuation
/// lines joined, comments dropped, `LABEL`s split into their pairs.
#[derive(Debug, Default, PartialEq)]
struct Runtime {
    directives: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
}

fn runtime_of(text: &str) -> Runtime {
    let mut joined: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    let last_from = joined
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM line");
    let mut runtime = Runtime::default();
    for line in &joined[last_from..] {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "LABEL" => {
                for pair in shell_words(rest) {
                    let (k, v) = pair.split_once('=').expect("LABEL key=value");
                    runtime.labels.insert(k.to_string(), v.to_string());
                }
            }
            "USER" | "ENTRYPOINT" | "CMD" | "EXPOSE" | "WORKDIR" | "ENV" => {
                let old = runtime
                    .directives
                    .insert(word.to_string(), rest.trim().to_string());
                assert!(old.is_none(), "{word} given twice in the final stage");
            }
            _ => {}
        }
    }
    runtime
}

/// Whitespace-separated words, double quotes grouping (and removed).
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quotes in {s:?}");
    if any {
        words.push(word);
    }
    words
}

/// The Containerfile that `scripts/image.sh` writes (its quoted heredoc).
fn script_containerfile() -> String {
    let script = std::fs::read_to_string(repo().join("scripts/image.sh")).unwrap();
    let start = script
        .find("<<'CONTAINERFILE'\n")
        .expect("the script's Containerfile heredoc");
    let body = &script[start + "<<'CONTAINERFILE'\n".len()..];
    let end = body
        .find("\nCONTAINERFILE\n")
        .expect("the end of the heredoc");
    body[..end].to_string()
}

#[test]
fn the_dockerfile_and_the_image_script_agree() {
    let dockerfile = runtime_of(&std::fs::read_to_string(repo().join("Dockerfile")).unwrap());
    let script = runtime_of(&script_containerfile());
    assert_eq!(script, dockerfile);
    // Exact values, so an edit of both at once is still a deliberate one.
    assert_eq!(
        dockerfile.directives["USER"],
        format!("{USER_ID}:{USER_ID}")
    );
    assert_eq!(dockerfile.directives["ENTRYPOINT"], r#"["/qpm-operator"]"#);
    assert_eq!(dockerfile.directives["CMD"], r#"["run"]"#);
    assert_eq!(dockerfile.directives["EXPOSE"], "8080");
    assert_eq!(
        dockerfile.labels.keys().collect::<Vec<_>>(),
        [
            "org.opencontainers.image.description",
            "org.opencontainers.image.licenses",
            "org.opencontainers.image.title"
        ]
    );
    assert_eq!(
        dockerfile.labels["org.opencontainers.image.licenses"],
        env!("CARGO_PKG_LICENSE")
    );
    // The port the Deployment serves metrics and probes on.
    let deployment = std::fs::read_to_string(repo().join("deploy/base/deployment.yaml")).unwrap();
    assert!(deployment.contains("containerPort: 8080"), "{deployment}");
    // The user the script's passwd names is the USER.
    let script_text = std::fs::read_to_string(repo().join("scripts/image.sh")).unwrap();
    assert!(
        script_text.contains(&format!("nonroot:x:{USER_ID}:{USER_ID}:")),
        "the image's passwd entry must be uid/gid {USER_ID}"
    );
}

#[test]
fn label_values_keep_their_spaces_and_lines_join() {
    let r = runtime_of(
        "FROM a AS b\nUSER 1\nFROM scratch\n# c\nLABEL x=\"a b\" \\\n      y=z\nUSER 2:2\n",
    );
    assert_eq!(r.directives["USER"], "2:2");
    assert_eq!(r.labels["x"], "a b");
    assert_eq!(r.labels["y"], "z");
}

// ---------------------------------------------------------------------------------------------
// The image, built and run

fn run(cmd: &mut Command) -> Output {
    run_with_input(cmd, None)
}

/// Run `cmd` to its end, `input` on its stdin; it must succeed.
fn run_with_input(cmd: &mut Command, input: Option<&str>) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdin = child.stdin.take();
    if let (Some(text), Some(mut stdin)) = (input, stdin) {
        use std::io::Write;
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn found(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The binary to put in the image: `QPM_IMAGE_BINARY`, else the newer of the release and the
/// debug build of this target directory, with its profile.
fn binary() -> Option<(PathBuf, &'static str)> {
    if let Ok(p) = std::env::var("QPM_IMAGE_BINARY") {
        return Some((PathBuf::from(p), "QPM_IMAGE_BINARY"));
    }
    // The test's own binary lives in <target>/debug (or /release under `cargo test --release`).
    let own = PathBuf::from(env!("CARGO_BIN_EXE_qpm-operator"));
    let target = own.parent()?.parent()?;
    ["release", "debug"]
        .into_iter()
        .filter_map(|profile| {
            let p = target.join(profile).join("qpm-operator");
            let modified = std::fs::metadata(&p).ok()?.modified().ok()?;
            Some((modified, p, profile))
        })
        .max_by_key(|(modified, _, _)| *modified)
        .map(|(_, p, profile)| (p, profile))
}

/// Removes the test image (and its mount) however the test ends.
struct Image {
    tag: String,
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["image", "unmount", &self.tag])
            .output();
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.tag])
            .output();
    }
}

/// Every file and folder under `root`, as absolute paths inside the image.
fn walk(root: &Path) -> Vec<(String, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            let inside = format!("/{}", path.strip_prefix(root).unwrap().display());
            out.push((inside, meta));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The absolute paths `ldd` prints for `binary`: its libraries and the loader.
fn linked_libraries(binary: &Path) -> BTreeSet<String> {
    let out = run(Command::new("ldd").arg(binary));
    stdout(&out)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(str::to_string)
        .collect()
}

/// The examples as one multi-document stream (the image holds no examples/ of its own).
fn examples_stream() -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[test]
fn the_image_runs_as_non_root_on_a_read_only_root() {
    if !found("podman") {
        eprintln!("SKIPPED: podman is not installed (Debian: apt-get install podman)");
        return;
    }
    let uid = stdout(&run(Command::new("id").arg("-u")));
    if uid.trim() != "0" {
        eprintln!(
            "SKIPPED: podman image mount and chroot need root (uid {})",
            uid.trim()
        );
        return;
    }
    let Some((binary, which)) = binary() else {
        eprintln!("SKIPPED: no built qpm-operator binary in target/release or target/debug");
        return;
    };
    eprintln!("image of {} ({which})", binary.display());

    let tag = format!("localhost/qpm-operator-test:{}", std::process::id());
    let image = Image { tag: tag.clone() };
    let built = run(Command::new(repo().join("scripts/image.sh"))
        .arg(&binary)
        .arg(&image.tag));
    assert_eq!(stdout(&built).trim().len(), 64, "an image id: {built:?}");

    // The image's configuration is the Dockerfile's.
    let config: serde_json::Value =
        serde_json::from_str(&stdout(&run(Command::new("podman").args([
            "image",
            "inspect",
            "--format",
            "{{json .Config}}",
            &tag,
        ]))))
        .unwrap();
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/qpm-operator"]));
    assert_eq!(config["Cmd"], serde_json::json!(["run"]));
    assert_eq!(config["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
    assert_eq!(
        config["Labels"]["org.opencontainers.image.title"],
        "qpm-operator"
    );

    let size: u64 = stdout(&run(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        &tag,
    ])))
    .trim()
    .parse()
    .unwrap();
    let binary_size = std::fs::metadata(&binary).unwrap().len();
    eprintln!(
        "image size: {size} bytes ({:.1} MiB); binary {binary_size} bytes",
        size as f64 / 1048576.0
    );
    // A release build (found, or named by QPM_IMAGE_BINARY) must meet the size goal.
    if binary.parent().and_then(|d| d.file_name()) == Some(std::ffi::OsStr::new("release")) {
        assert!(
            size <= RELEASE_IMAGE_LIMIT,
            "the release image is {size} bytes, over {RELEASE_IMAGE_LIMIT}"
        );
    }
    // Whatever the binary: the libraries, CA bundle and passwd add a few MiB, nothing more.
    assert!(
        size <= binary_size + 8 * 1024 * 1024,
        "{size} bytes for a {binary_size}-byte binary: something else got into the image"
    );

    let mount = PathBuf::from(
        stdout(&run(Command::new("podman").args(["image", "mount", &tag])))
            .trim()
            .to_string(),
    );
    // podman mounts images read-only: the root the binary sees cannot be written, even by root.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let options = mounts
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(1) == Some(&mount.to_str().unwrap()))
        .map(|f| f[3].to_string())
        .expect("the image mount in /proc/mounts");
    assert!(options.split(',').any(|o| o == "ro"), "mounted {options}");

    // Exactly the binary, what it links, the CA bundle and the user database.
    let entries = walk(&mount);
    let files: BTreeSet<String> = entries
        .iter()
        .filter(|(_, m)| !m.is_dir())
        .map(|(p, _)| p.clone())
        .collect();
    let mut expected = linked_libraries(&binary);
    expected.extend(
        [
            "/qpm-operator",
            "/etc/passwd",
            "/etc/group",
            "/etc/ssl/certs/ca-certificates.crt",
        ]
        .map(String::from),
    );
    assert_eq!(files, expected);
    // Nothing writable by the user: everything is root's, without group or other write bits.
    for (path, meta) in &entries {
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{path} is not root's");
        assert_eq!(meta.mode() & 0o022, 0, "{path}: mode {:o}", meta.mode());
    }
    let passwd = std::fs::read_to_string(mount.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains(&format!(":{USER_ID}:{USER_ID}:")),
        "{passwd}"
    );

    // Looked up on this process's PATH: the command's own environment is cleared below.
    let chroot = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("chroot"))
        .find(|p| p.is_file())
        .expect("chroot (coreutils) on PATH");
    let inside = |args: &[&str], input: Option<&str>| -> Output {
        let mut cmd = Command::new(&chroot);
        cmd.arg(format!("--userspec={USER_ID}:{USER_ID}"))
            .arg(&mount)
            .arg("/qpm-operator")
            .args(args)
            // Nothing of the test's environment. Without HOME (and XDG_STATE_HOME) the CLI keeps
            // its state in memory: on this read-only root there is nowhere to write a state file
            // or its lock (a container that wants one mounts a volume and passes --state).
            .env_clear();
        run_with_input(&mut cmd, input)
    };

    assert_eq!(
        stdout(&inside(&["--version"], None)),
        format!("qpm-operator {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        stdout(&inside(&["crd"], None)),
        qpm_operator::api::crd_yaml().unwrap()
    );

    // The embedded simulator is asked for with --sim where the binary has it; older binaries
    // use it when no gateway is configured (and the environment above configures none).
    let help = stdout(&inside(&["apply", "--help"], None));
    let mut apply = vec!["apply"];
    if help.contains("--sim ") || help.contains("--sim\n") {
        apply.push("--sim");
    }
    apply.extend(["-f", "-"]);
    let applied = stdout(&inside(&apply, Some(&examples_stream())));
    assert!(
        applied.ends_with("4 created, 0 updated, 0 unchanged, 0 failed\n"),
        "{applied}"
    );
}
