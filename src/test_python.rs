//! The Python interpreter the tests that compare with prometheus_client run:
//! `$PYTHON` if set, else `python3` if it can import prometheus_client, else
//! one the tests make once, a venv in `target/test-python` with
//! prometheus_client installed from the package index.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// A Python that imports prometheus_client; panics saying why there is none.
pub fn with_prometheus_client() -> &'static PathBuf {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    FOUND.get_or_init(|| {
        if let Some(python) = std::env::var_os("PYTHON") {
            return PathBuf::from(python);
        }
        let system = PathBuf::from("python3");
        if imports_prometheus_client(&system) {
            return system;
        }
        let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-python");
        let python = venv.join("bin/python");
        if !imports_prometheus_client(&python) {
            run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
            run(Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "prometheus_client>=0.20",
            ]));
        }
        assert!(
            imports_prometheus_client(&python),
            "{} cannot import prometheus_client",
            python.display()
        );
        python
    })
}

fn imports_prometheus_client(python: &PathBuf) -> bool {
    Command::new(python)
        .args(["-c", "import prometheus_client"])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn run(command: &mut Command) {
    let out = command.output().expect("python3 runs");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
