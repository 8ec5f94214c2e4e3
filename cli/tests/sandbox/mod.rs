//! [`Sandbox`]: a temporary working directory in which tests run the real `stowage` binary.

#![allow(dead_code)] // each test binary uses a different part of it

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The outcome of one run of the binary.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Raw stdout.
    pub stdout: Vec<u8>,
    /// Stderr as text.
    pub stderr: String,
}

impl Run {
    /// Stdout as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stdout parsed as one JSON object per line.
    pub fn json_lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect()
    }

    /// The single JSON object on stdout.
    pub fn json(&self) -> Value {
        let mut lines = self.json_lines();
        assert_eq!(
            lines.len(),
            1,
            "expected one JSON line, got {:?}",
            self.text()
        );
        lines.remove(0)
    }
}

/// A fresh temporary directory used as the working directory of every run.
pub struct Sandbox {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Sandbox {
    /// A new empty sandbox.
    pub fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().expect("creating a temp dir"),
            env: Vec::new(),
        }
    }

    /// The working directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the sandbox.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file inside the sandbox, returning its path.
    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Sets an environment variable for every later run.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.push((name.to_string(), value.to_string()));
    }

    /// Whether the default data directory exists.
    pub fn has_default_data_dir(&self) -> bool {
        self.join("stowage-data").exists()
    }

    /// `stowage args…` in the sandbox, for a test that sets up stdio itself.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stowage"));
        cmd.args(args)
            .current_dir(self.path())
            .env_remove("STOWAGE_CONFIG")
            .env_remove("RUST_LOG");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts `stowage args…` without waiting: stdin and stdout are null, stderr is piped.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning stowage")
    }

    /// Runs `stowage args…` with stdin closed-empty.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, b"")
    }

    /// Runs `stowage args…` feeding `input` on stdin.
    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning stowage");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        // Feed stdin from a thread so a large payload cannot deadlock against a full stdout.
        let feeder = std::thread::spawn(move || {
            // The binary may legitimately stop reading early (a refused put).
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("waiting for stowage");
        feeder.join().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and asserts exit code 0.
    pub fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, 0, "stowage {args:?} failed: {}", run.stderr);
        run
    }

    /// Runs and asserts the exit code, and that stderr is one `stowage: ` line.
    pub fn fails(&self, args: &[&str], code: i32) -> Run {
        let run = self.run(args);
        assert_eq!(
            run.code,
            code,
            "stowage {args:?}: expected exit {code}, got {}; stderr: {}; stdout: {}",
            run.code,
            run.stderr,
            run.text()
        );
        assert_one_error_line(&run.stderr);
        run
    }
}

/// Asserts stderr is exactly one line starting `stowage: `.
pub fn assert_one_error_line(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got {stderr:?}");
    assert!(lines[0].starts_with("stowage: "), "{stderr:?}");
}

/// Every byte value, repeated to `len` bytes (spans several streaming chunks when large).
pub fn all_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 256) as u8).collect()
}
