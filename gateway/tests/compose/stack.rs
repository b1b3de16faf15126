//! One compose project of the test: a unique name, the project's own image tag, a test-only
//! override file, and a guard that always tears everything down (containers, networks,
//! volumes, the image), also when the test fails. Leftovers of a run that was killed before
//! its guard ran are found by their name and removed at the start of the next run.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::docker::{artifacts, buildkit_cli, check, docker, root, run_for};

/// Compose projects, image tags and probe containers of this test are named
/// `gwcompose_<pid>_<unix secs>`: a run whose pid is gone left them behind.
pub const PREFIX: &str = "gwcompose_";

/// The services of the real run. Grafana is left out: no image of it can be had here.
pub const SERVICES: [&str; 6] = [
    "redis",
    "gateway-1",
    "gateway-2",
    "gateway-3",
    "lb",
    "prometheus",
];

/// The compose file's published host ports, as variables (`127.0.0.1:${LB_PORT-4000}:4000`):
/// set empty, Docker picks a free port for each, so the run never collides with what the
/// machine already listens on (4000 and 9090 included).
pub const PORT_VARS: [&str; 4] = [
    "LB_PORT",
    "LB_STATS_PORT",
    "PROMETHEUS_PORT",
    "GRAFANA_PORT",
];

/// Services whose image is the project's own (the gateway image).
const IMAGE_SERVICES: [&str; 4] = ["gateway-1", "gateway-2", "gateway-3", "loadtest"];

/// Services that set `ulimits.nofile` in the compose file.
const NOFILE_SERVICES: [&str; 6] = [
    "redis",
    "gateway-1",
    "gateway-2",
    "gateway-3",
    "lb",
    "loadtest",
];

/// One run's compose project; dropping it tears the project down.
pub struct Stack {
    /// Compose project name (`-p`), unique per run.
    pub name: String,
    /// Tag of the image this run builds, in place of the compose file's shared `gateway:local`
    /// (a user's own `gateway:local` stays untouched).
    pub image: String,
    /// Name of the lone container of the image check.
    pub probe: String,
    /// The test-only override file (`-f`), written by `write_override`.
    override_file: PathBuf,
}

impl Stack {
    pub fn new() -> Stack {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let name = format!("{PREFIX}{}_{secs}", std::process::id());
        Stack {
            image: format!("gateway:{name}"),
            probe: format!("{name}_image"),
            override_file: PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.yml")),
            name,
        }
    }

    /// The override: this run's image for the gateway services and, where the engine cannot
    /// grant the compose file's open-files limit (`engine_nofile`), the most it can.
    pub fn write_override(&self, nofile: Option<u64>) {
        let mut yaml = String::from("# gateway/tests/compose: one run's overrides\nservices:\n");
        for svc in SERVICES.iter().chain(["loadtest"].iter()) {
            let mut lines = Vec::new();
            if IMAGE_SERVICES.contains(svc) {
                lines.push(format!("    image: {}", self.image));
            }
            if let (Some(n), true) = (nofile, NOFILE_SERVICES.contains(svc)) {
                lines.push(format!(
                    "    ulimits:\n      nofile:\n        soft: {n}\n        hard: {n}"
                ));
            }
            if !lines.is_empty() {
                yaml.push_str(&format!("  {svc}:\n{}\n", lines.join("\n")));
            }
        }
        std::fs::write(&self.override_file, yaml).expect("write the compose override");
    }

    /// `docker-compose -p NAME -f docker-compose.yml -f OVERRIDE`, published ports left to
    /// Docker.
    pub fn compose(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(root())
            .args(self.compose_args())
            .envs(PORT_VARS.iter().map(|v| (v, "")));
        cmd
    }

    /// The arguments `compose()` starts with (for commands run by the Node driver).
    pub fn compose_args(&self) -> Vec<String> {
        vec![
            "-p".into(),
            self.name.clone(),
            "-f".into(),
            root().join("docker-compose.yml").display().to_string(),
            "-f".into(),
            self.override_file.display().to_string(),
        ]
    }

    /// The host address Docker published `port` of `service` on.
    pub fn port(&self, service: &str, port: u16) -> SocketAddr {
        let out = check(
            self.compose().args(["port", service, &port.to_string()]),
            Duration::from_secs(30),
            "docker-compose port",
        );
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("`docker-compose port {service} {port}` said {out:?}: {e}"))
    }

    /// The container id of `service`.
    pub fn container(&self, service: &str) -> String {
        let id = check(
            self.compose().args(["ps", "-q", service]),
            Duration::from_secs(30),
            "docker-compose ps",
        );
        let id = id.trim().to_string();
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    /// Every container's log, into the artifacts directory; the path.
    fn save_logs(&self) -> PathBuf {
        let path = artifacts().join(format!("{}-logs.txt", self.name));
        let out = run_for(
            self.compose().args([
                "--profile",
                "loadtest",
                "logs",
                "--no-color",
                "--timestamps",
            ]),
            Duration::from_secs(60),
        );
        let text = match out {
            Ok(o) => format!("{}{}", o.stdout, o.stderr),
            Err(e) => e,
        };
        let _ = std::fs::write(&path, text);
        path
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "compose test failed: container logs in {}",
                self.save_logs().display()
            );
        }
        sweep(&self.name);
        let _ = std::fs::remove_file(&self.override_file);
        prune();
    }
}

/// The open-files limit the engine can give a container, when it is below `wanted` (the
/// compose file's `nofile`). A dockerd without CAP_SYS_RESOURCE (this kind of sandbox) cannot
/// raise a container's hard limit above its own, and the container then fails to start.
pub fn engine_nofile(image: &str, wanted: u64) -> Option<u64> {
    let limit = format!("nofile={wanted}:{wanted}");
    let granted = run_for(
        &mut docker(&[
            "run",
            "--rm",
            "--ulimit",
            &limit,
            "--entrypoint",
            "true",
            image,
        ]),
        Duration::from_secs(60),
    )
    .is_ok_and(|o| o.status.success());
    if granted {
        return None;
    }
    let out = check(
        &mut docker(&[
            "run",
            "--rm",
            "--entrypoint",
            "bash",
            image,
            "-c",
            "ulimit -Hn",
        ]),
        Duration::from_secs(60),
        "reading a container's default open-files limit",
    );
    let n = out
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("`ulimit -Hn` in a container said {out:?}: {e}"));
    Some(n)
}

/// Removes everything of project `name`: compose's own teardown, then whatever carries its
/// label or name (a `run` container of an interrupted load test, the probe), then its image.
pub fn sweep(name: &str) {
    let down = run_for(
        Command::new("docker-compose")
            .current_dir(root())
            .args(["-p", name, "-f", "docker-compose.yml"])
            .args(["--profile", "loadtest", "down"])
            .args(["--volumes", "--remove-orphans", "--timeout", "5"])
            .envs(PORT_VARS.iter().map(|v| (v, ""))),
        Duration::from_secs(180),
    );
    match down {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!("docker-compose down {name}: {}{}", o.stdout, o.stderr),
        Err(e) => eprintln!("docker-compose down {name}: {e}"),
    }
    let label = format!("label=com.docker.compose.project={name}");
    let probe = format!("{name}_image");
    let mut containers = listed(&["ps", "-aq", "--filter", &label]);
    containers.extend(listed(&[
        "ps",
        "-aq",
        "--filter",
        &format!("name=^{probe}$"),
    ]));
    for id in &containers {
        quiet(&["rm", "-f", "-v", id]);
    }
    for id in listed(&["network", "ls", "-q", "--filter", &label]) {
        quiet(&["network", "rm", &id]);
    }
    for id in listed(&["volume", "ls", "-q", "--filter", &label]) {
        quiet(&["volume", "rm", "-f", &id]);
    }
    quiet(&["image", "rm", &format!("gateway:{name}")]);
}

/// What is left of project `name`: containers, networks, its image (empty after `sweep`).
pub fn remains_of(name: &str) -> Vec<String> {
    let label = format!("label=com.docker.compose.project={name}");
    let mut left = listed(&[
        "ps",
        "-a",
        "--filter",
        &label,
        "--format",
        "container {{.Names}}",
    ]);
    left.extend(listed(&[
        "ps",
        "-a",
        "--filter",
        &format!("name=^{name}_image$"),
        "--format",
        "container {{.Names}}",
    ]));
    left.extend(listed(&[
        "network",
        "ls",
        "--filter",
        &label,
        "--format",
        "network {{.Name}}",
    ]));
    left.extend(listed(&["images", "-q", &format!("gateway:{name}")]));
    left
}

/// Every volume's name.
pub fn volumes() -> BTreeSet<String> {
    listed(&["volume", "ls", "-q"]).into_iter().collect()
}

/// Projects, probes and images of earlier runs whose process is gone, swept before this run.
pub fn remove_leftovers() {
    let project = "{{.Label \"com.docker.compose.project\"}}";
    let mut names: BTreeSet<String> = BTreeSet::new();
    names.extend(listed(&["ps", "-a", "--format", project]));
    names.extend(listed(&["network", "ls", "--format", project]));
    names.extend(
        listed(&["ps", "-a", "--format", "{{.Names}}"])
            .into_iter()
            .filter_map(|n| n.strip_suffix("_image").map(str::to_string)),
    );
    names.extend(listed(&["images", "gateway", "--format", "{{.Tag}}"]));
    for name in names {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists() {
            println!("removing {name}, left behind by an interrupted run");
            sweep(&name);
        }
    }
}

/// Dangling images, and BuildKit's cache beyond a bound: the Dockerfile's dependency cache
/// (cargo registry and target mounts, under 2 GB) stays, so the next build only recompiles
/// the workspace crates.
fn prune() {
    quiet(&["image", "prune", "--force"]);
    let pruned = run_for(
        Command::new(buildkit_cli()).args(["builder", "prune", "--force", "--keep-storage", "3GB"]),
        Duration::from_secs(120),
    );
    if let Err(e) = pruned {
        eprintln!("docker builder prune: {e}");
    }
}

/// The lines `docker ARGS` prints (none when it fails).
fn listed(args: &[&str]) -> Vec<String> {
    match run_for(&mut docker(args), Duration::from_secs(60)) {
        Ok(o) if o.status.success() => o
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// `docker ARGS`, whose failure (already gone) does not matter.
fn quiet(args: &[&str]) {
    let _ = run_for(&mut docker(args), Duration::from_secs(120));
}
