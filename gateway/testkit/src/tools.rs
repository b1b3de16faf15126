//! External tools a test drives to completion (validators such as `promtool` or
//! `kubernetes-validate`, the Autobahn client): finding them where `.ci/setup*` installs them,
//! running them with their output kept for the failure message, YAML read through PyYAML, and
//! temporary directories for the files they are given. A missing tool fails the test with the
//! instruction that installs it, never a silent skip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub use tempfile::TempDir;

/// Where `.ci/setup` installs the tools that are not Debian packages: the Python tools (and Node
/// when the machine has none recent enough) in a virtual environment at a fixed place of the
/// repository, so no test depends on the caller's PATH for them.
pub fn venv_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-tools/venv/bin")
}

/// `name` from [`venv_bin`], else from PATH, else from `/usr/sbin` or `/usr/local/bin` (the
/// Debian packages' daemons, e.g. haproxy, where root's PATH may lack sbin).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs = vec![venv_bin()];
    dirs.extend(
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    dirs.extend(["/usr/sbin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// The Python interpreter of [`venv_bin`] (it has PyYAML), else `python3` from PATH.
pub fn python3() -> PathBuf {
    find_tool("python3").unwrap_or_else(|| PathBuf::from("python3"))
}

/// `node` from [`venv_bin`] (linked there by `.ci/setup` when the machine's was missing or
/// older than 20), else the machine's own.
pub fn node() -> PathBuf {
    find_tool("node").unwrap_or_else(|| PathBuf::from("node"))
}

/// [`find_tool`], failing the test with `how` (what installs it) when it is missing.
pub fn tool(name: &str, how: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| panic!("`{name}` not found: {how}"))
}

/// Run a command to completion; panics when it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run a command and require exit status 0 (the failure shows its output).
pub fn check(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a command with `input` on stdin.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    // a writer thread: the child may fill its stdout pipe before reading all of stdin
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("stdin writer");
    out
}

/// A command's stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The YAML documents of `text` (empty ones left out) as JSON values, through PyYAML (installed
/// with the deploy validators); anchors and merge keys are resolved.
pub fn yaml_docs(text: &str) -> Vec<Value> {
    let out = run_with_input(
        Command::new(python3()).arg("-c").arg(
            "import json, sys, yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        ),
        text.as_bytes(),
    );
    assert!(
        out.status.success(),
        "YAML parse failed (PyYAML missing? run `.ci/setup`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("YAML as JSON")
}

/// A file's text; panics naming the file.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The first YAML document of the file at `path`.
pub fn yaml_file(path: &Path) -> Value {
    yaml_docs(&read(path))
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no YAML document in {}", path.display()))
}

/// A fresh directory under the system temp dir, named after `tag`; removed on drop.
pub fn temp_dir(tag: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("gateway-{tag}-"))
        .tempdir()
        .expect("temp dir")
}

/// Write `text` to `dir/name`; its path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}
