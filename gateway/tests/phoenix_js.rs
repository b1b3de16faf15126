//! Runs the official phoenix.js client suite (`gateway/tests/js`, Node's built-in test runner)
//! against this package's `gateway` binary.
//!
//! The JavaScript tests are the compatibility oracle: they drive the unmodified npm `phoenix`
//! client over the `ws` WebSocket against real gateway processes (see `tests/js/helpers`).
//! This wrapper only locates the binary, hands it over through `GATEWAY_BIN`, streams Node's
//! output and fails when Node fails. Missing `node_modules` is an error, never a skip, so a
//! machine that was not set up cannot pass silently.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::process::wait_with_timeout;

/// Upper bound for the whole Node run; the suite takes well under a minute, so hitting this
/// means something hangs and the run must be stopped rather than block CI.
const SUITE_TIMEOUT: Duration = Duration::from_secs(600);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

#[test]
fn phoenix_js_client_suite() {
    let dir = js_dir();
    for module in ["phoenix", "ws"] {
        assert!(
            dir.join("node_modules").join(module).is_dir(),
            "{} is missing from {}: run `.ci/setup` (or `npm ci` in gateway/tests/js) first",
            module,
            dir.join("node_modules").display()
        );
    }

    let mut child = Command::new(testkit::tools::node())
        .args(["--test", "--test-reporter=spec"])
        .current_dir(&dir)
        .env("GATEWAY_BIN", env!("CARGO_BIN_EXE_gateway"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` (Node 20+ is required, see .ci/setup): {e}"));

    match wait_with_timeout(&mut child, SUITE_TIMEOUT) {
        Some(status) => assert!(
            status.success(),
            "phoenix.js suite failed ({status}); see the Node output above"
        ),
        None => panic!("phoenix.js suite did not finish within {SUITE_TIMEOUT:?} and was killed"),
    }
}
