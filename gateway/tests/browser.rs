//! Runs the headless-browser suite (`gateway/tests/browser`, Node's built-in test runner driving
//! the system Chromium through `playwright-core`) against this package's `gateway` binary.
//!
//! The browser tests load the demo page from real gateway nodes clustered through a private
//! `redis-server` and chat between tabs, over WebSocket and over the LongPoll fallback. This
//! wrapper checks that the tools are installed, hands over the binary (`GATEWAY_BIN`) and the
//! screenshot directory (`target/test-artifacts/browser`), streams Node's output and fails when
//! Node fails. A missing tool is an error that names `.ci/setup`, never a silent skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::process::wait_with_timeout;

/// Upper bound for the whole browser run; it takes seconds, so hitting this means a hang.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

/// The browser the tests drive (the Debian `chromium` package), unless `CHROMIUM_BIN` says otherwise.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// `target/test-artifacts/browser` of the target dir this test was built into.
fn artifacts_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .unwrap_or(tmp)
        .join("test-artifacts")
        .join("browser")
}

#[test]
fn browser_suite() {
    let tests = tests_dir();
    let browser_dir = tests.join("browser");
    let chromium = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| DEFAULT_CHROMIUM.into());
    assert!(
        Path::new(&chromium).is_file(),
        "{chromium} is missing: run `.ci/setup` (it installs the Debian `chromium` package)"
    );
    let playwright = browser_dir.join("node_modules").join("playwright-core");
    assert!(
        playwright.is_dir(),
        "{} is missing: run `.ci/setup` (or `npm ci` in gateway/tests/browser) first",
        playwright.display()
    );
    // the demo page gets phoenix.min.js from the pinned npm package (the browser has no internet)
    let phoenix = tests.join("js").join("node_modules").join("phoenix");
    assert!(
        phoenix.is_dir(),
        "{} is missing: run `.ci/setup` (or `npm ci` in gateway/tests/js) first",
        phoenix.display()
    );
    let redis = Command::new("redis-server").arg("--version").output();
    assert!(
        matches!(&redis, Ok(out) if out.status.success()),
        "redis-server is missing: run `.ci/setup`"
    );

    let mut child = Command::new(testkit::tools::node())
        .args(["--test", "--test-reporter=spec"])
        .current_dir(&browser_dir)
        .env("GATEWAY_BIN", env!("CARGO_BIN_EXE_gateway"))
        .env("CHROMIUM_BIN", &chromium)
        .env("BROWSER_ARTIFACTS_DIR", artifacts_dir())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` (Node 20+ is required, see .ci/setup): {e}"));

    match wait_with_timeout(&mut child, SUITE_TIMEOUT) {
        Some(status) => assert!(
            status.success(),
            "browser suite failed ({status}); see the Node output above (screenshots in {})",
            artifacts_dir().display()
        ),
        None => panic!("browser suite did not finish within {SUITE_TIMEOUT:?} and was killed"),
    }
}
