//! The files a container build and Compose use, against their real tools: docker-compose.yml
//! (Compose Specification schema, docker-compose 1.29 `config`), the Dockerfile (hadolint and
//! its promised shape), the `.dockerignore` build context (a complete, locked workspace), the
//! HAProxy configs (`haproxy -c`) and `yamllint` over every YAML file.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::json;
use testkit::tools::{check, read, stdout, temp_dir, yaml_docs};

use crate::{root, tool};

#[test]
fn compose_file_passes_the_compose_spec_and_docker_compose_1_29() {
    let compose = root().join("docker-compose.yml");
    check(
        Command::new(tool("check-jsonschema"))
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(&compose),
    );
    // 1.29 needs no engine for `config`; both with and without the loadtest profile
    let dc = tool("docker-compose");
    check(
        Command::new(&dc)
            .args(["-f", "docker-compose.yml", "config", "-q"])
            .current_dir(root()),
    );
    let full = check(
        Command::new(&dc)
            .args([
                "-f",
                "docker-compose.yml",
                "--profile",
                "loadtest",
                "config",
            ])
            .current_dir(root()),
    );
    let cfg = yaml_docs(&stdout(&full)).remove(0);
    let services = cfg["services"].as_object().expect("services");
    for name in [
        "redis",
        "gateway-1",
        "gateway-2",
        "gateway-3",
        "lb",
        "prometheus",
        "grafana",
        "loadtest",
    ] {
        assert!(services.contains_key(name), "no service {name}");
    }
    let mut node_ids = BTreeSet::new();
    for i in 1..=3 {
        let svc = &services[&format!("gateway-{i}")];
        let env = &svc["environment"];
        assert_eq!(env["GATEWAY_REDIS_URL"], "redis://redis:6379/");
        node_ids.insert(
            env["GATEWAY_NODE_ID"]
                .as_str()
                .expect("node id")
                .to_string(),
        );
        assert_eq!(svc["ulimits"]["nofile"]["hard"], 1048576);
        assert!(svc["sysctls"]["net.core.somaxconn"].is_string());
        assert!(svc["sysctls"]["net.ipv4.ip_local_port_range"].is_string());
    }
    assert_eq!(node_ids.len(), 3, "node ids must differ");
    // on localhost:4000, as docker-compose 1.29 normalises it
    assert_eq!(services["lb"]["ports"][0], "127.0.0.1:4000:4000/tcp");
    assert_eq!(services["loadtest"]["profiles"], json!(["loadtest"]));
}

#[test]
fn dockerfile_passes_hadolint_and_has_the_promised_shape() {
    check(
        Command::new(tool("hadolint"))
            .args(["--failure-threshold", "error", "Dockerfile"])
            .current_dir(root()),
    );
    let text = read(&root().join("Dockerfile"));
    let from: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from.len(), 2, "multi-stage: builder and runtime");
    assert!(from[0].contains("rust:") && from[1].contains("slim"));
    for needle in [
        "cargo build --release --locked -p gateway -p loadtest",
        "USER 10001:10001",
        "EXPOSE 4000",
        "HEALTHCHECK",
        "/healthz",
        "ENTRYPOINT [\"/usr/local/bin/gateway\"]",
    ] {
        assert!(text.contains(needle), "Dockerfile lacks {needle:?}");
    }
    // the build context keeps what the build needs and nothing else
    let ignore = read(&root().join(".dockerignore"));
    for keep in [
        "!Cargo.toml",
        "!Cargo.lock",
        "!gateway/",
        "!pubsub-redis/",
        "!loadtest/",
    ] {
        assert!(
            ignore.lines().any(|l| l == keep),
            ".dockerignore lacks {keep}"
        );
    }
    let workspace = read(&root().join("Cargo.toml"));
    for member in ["gateway", "pubsub-redis", "loadtest"] {
        assert!(workspace.contains(&format!("\"{member}\"")));
        assert!(text.contains(&format!("COPY {member} {member}")));
    }
}

/// Copy `from` to `to`, leaving out directories named in `skip`.
fn copy_tree(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        let (src, dst) = (entry.path(), to.join(&name));
        if src.is_dir() {
            if !skip.iter().any(|s| name == *s) {
                copy_tree(&src, &dst, skip);
            }
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

/// What `.dockerignore` lets into the build context is a complete workspace whose lockfile
/// needs no update (`cargo build --locked` in the image would fail otherwise).
#[test]
fn docker_build_context_is_a_complete_locked_workspace() {
    let ignore = read(&root().join(".dockerignore"));
    let lines: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(lines.first(), Some(&"*"), "the context is an allow-list");
    let tmp = temp_dir("docker-context");
    for allowed in lines.iter().filter_map(|l| l.strip_prefix('!')) {
        let src = root().join(allowed.trim_end_matches('/'));
        let dst = tmp.path().join(allowed.trim_end_matches('/'));
        if src.is_dir() {
            copy_tree(&src, &dst, &["node_modules", "target"]);
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
    check(
        Command::new(option_env!("CARGO").unwrap_or("cargo"))
            .args(["metadata", "--locked", "--offline", "--format-version", "1"])
            .arg("--manifest-path")
            .arg(tmp.path().join("Cargo.toml"))
            .stdout(Stdio::null()),
    );
}

#[test]
fn haproxy_configs_are_valid() {
    let haproxy = tool("haproxy");
    for cfg in [
        "deploy/haproxy/haproxy.cfg",
        "deploy/k8s/loadtest/haproxy.cfg",
    ] {
        // the compose/cluster hostnames do not resolve here: warnings, not errors
        check(
            Command::new(&haproxy)
                .args(["-c", "-q", "-f"])
                .arg(root().join(cfg)),
        );
    }
}

#[test]
fn yaml_files_lint_clean() {
    check(
        Command::new(tool("yamllint"))
            .args([
                "-s",
                "-c",
                "deploy/.yamllint",
                "docker-compose.yml",
                "deploy",
            ])
            .current_dir(root()),
    );
}
