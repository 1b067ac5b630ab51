//! `apply` of 1,000 generated DeploymentJobs against the embedded simulator, with the release
//! binary: wall time, API calls by endpoint (`--stats`) and peak RSS of each run. The first run
//! creates everything; the second must write nothing; a `plan` follows.
//!
//! `cargo bench --bench cli_apply` (or `-- 5000` for another count). Figures in
//! docs/PERFORMANCE.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SCRIPTS: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: bench-scripts, namespace: bench}
data:
  check.ps1: |
    $drive = Get-PSDrive -Name C
    if ($drive.Free -lt 10GB) { exit 1 }
  check.sh: |
    df -h / | tail -1
";

/// Job `i`: Windows or Linux, on-demand or recurring, one pre-deploy script from the ConfigMap
/// (Windows) or inline (Linux); every tenth job is the chained child of the one before.
fn job(i: usize) -> String {
    let windows = i % 5 < 3;
    let (platform, script_type, script) = if windows {
        (
            "Windows",
            "ps",
            "scriptFrom: {configMapKeyRef: {name: bench-scripts, key: check.ps1}}",
        )
    } else {
        ("Linux", "sh", "script: bHM=")
    };
    let schedule = match i % 4 {
        0 => "scheduleType: On-demand".to_string(),
        1 => "scheduleType: Daily\n    startDateTime: \"2025-7-01 09:57:18 AM\"".to_string(),
        2 => "scheduleType: Weekly\n    startDateTime: \"2025-7-01 09:57:18 AM\"\n    recurringWeekDays: \"0,1,0,0,0,0,0\"".to_string(),
        _ => "scheduleType: Monthly\n    startDateTime: \"2025-7-01 09:57:18 AM\"\n    dayOfMonth: 15".to_string(),
    };
    let child = i % 10 == 9;
    let link = if child {
        format!(
            "\n    linkedJobRef: {{name: job-{:04}}}\n    chainedJobRule:\n    - actionRefs: [{{actionItem: post}}]\n      threshold: 100",
            i - 1
        )
    } else {
        String::new()
    };
    format!(
        "apiVersion: pm.qualys.io/v1alpha1
kind: DeploymentJob
metadata: {{name: job-{i:04}, namespace: bench}}
spec:
  job:
    name: Bench job {i:04}
    type: Install
    platform: {platform}
    status: Disabled
    {schedule}
    timeout: 6
    timeoutUnit: HOURS
    approvedPatches: [{patch}]
    assetTagIds: [f81f37b3-a32b-4aa0-a428-12cad6e37db1]
    preDeployActions:
    - action: Run Script
      params: {{actionItem: pre, timeout: 180}}
      scriptType: {script_type}
      {script}
    postDeployActions:
    - action: Run Script
      params: {{actionItem: post, timeout: 180}}
      scriptType: {script_type}
      {script}{link}
",
        patch = uuid_for(i),
    )
}

fn uuid_for(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

struct Figures {
    code: i32,
    wall: Duration,
    peak_rss_kib: Option<u64>,
    stdout_tail: String,
    stats: String,
}

/// Run the binary under `/usr/bin/time -f %M` when present (peak RSS in KiB on stderr's last
/// line); else read VmHWM from /proc while it runs.
fn run(bin: &Path, args: &[&str]) -> Figures {
    let time = Path::new("/usr/bin/time");
    let started = Instant::now();
    let (output, peak) = if time.exists() {
        let out = Command::new(time)
            .arg("-f")
            .arg("PEAK_RSS_KIB=%M")
            .arg(bin)
            .args(args)
            .output()
            .expect("/usr/bin/time runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let peak = stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("PEAK_RSS_KIB="))
            .and_then(|v| v.trim().parse().ok());
        (out, peak)
    } else {
        let child = Command::new(bin)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the binary runs");
        let status_file = format!("/proc/{}/status", child.id());
        let peak = std::thread::spawn(move || {
            let mut peak = None;
            while let Ok(text) = std::fs::read_to_string(&status_file) {
                peak = text
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                    .or(peak);
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        let out = child.wait_with_output().expect("the binary finishes");
        (out, peak.join().unwrap_or(None))
    };
    let wall = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stats: String = stderr
        .lines()
        .skip_while(|l| !l.starts_with("API calls by endpoint:"))
        .take_while(|l| !l.starts_with("PEAK_RSS_KIB="))
        .map(|l| format!("{l}\n"))
        .collect();
    Figures {
        code: output.status.code().unwrap_or(-1),
        wall,
        peak_rss_kib: peak,
        stdout_tail: stdout.lines().last().unwrap_or_default().to_string(),
        stats,
    }
}

fn print(label: &str, f: &Figures) {
    println!("== {label}");
    println!("exit code: {}", f.code);
    println!("wall time: {:.2} s", f.wall.as_secs_f64());
    match f.peak_rss_kib {
        Some(k) => println!("peak RSS: {:.1} MiB", k as f64 / 1024.0),
        None => println!("peak RSS: unknown"),
    }
    println!("last line: {}", f.stdout_tail);
    print!("{}", f.stats);
}

fn main() {
    // `cargo bench` passes `--bench`; a number sets the job count.
    let count: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_qpm-operator"));
    let dir = std::env::temp_dir().join(format!("qpm-cli-apply-{}", std::process::id()));
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("temp dir");
    std::fs::write(manifests.join("scripts.yaml"), SCRIPTS).expect("write");
    for chunk in 0..count.div_ceil(100) {
        let docs: Vec<String> = (chunk * 100..((chunk + 1) * 100).min(count))
            .map(job)
            .collect();
        std::fs::write(
            manifests.join(format!("jobs-{chunk:03}.yaml")),
            docs.join("---\n"),
        )
        .expect("write");
    }
    let sim_state = dir.join("sim.json").display().to_string();
    let state = dir.join("state.json").display().to_string();
    let m = manifests.display().to_string();
    println!("{count} DeploymentJobs in {m}; binary {}", bin.display());
    let args = [
        "apply",
        "-f",
        &m,
        "--sim-state",
        &sim_state,
        "--state",
        &state,
        "--stats",
    ];
    let first = run(&bin, &args);
    print("apply (first run: create everything)", &first);
    let second = run(&bin, &args);
    print("apply (second run: nothing to do)", &second);
    let plan_args = [
        "plan",
        "-f",
        &m,
        "--sim-state",
        &sim_state,
        "--state",
        &state,
        "--stats",
    ];
    let plan = run(&bin, &plan_args);
    print("plan (after both runs)", &plan);
    let _ = std::fs::remove_dir_all(&dir);

    let ok = first.code == 0
        && second.code == 0
        && plan.code == 0
        && first.stdout_tail == format!("{count} created, 0 updated, 0 unchanged, 0 failed")
        && second.stdout_tail == format!("0 created, 0 updated, {count} unchanged, 0 failed")
        && second.stats.contains(", writes 0\n");
    if !ok {
        eprintln!("FAILED: the second run must change nothing and write nothing");
        std::process::exit(1);
    }
}
