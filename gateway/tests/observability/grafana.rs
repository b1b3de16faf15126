//! The Grafana dashboard: it matches the `Dashboard` type of the pinned `@grafana/schema`
//! (and a broken copy does not), its layout has unique ids and no overlaps, every panel asks a
//! question that PANELS.md repeats, and the provisioning files point where compose mounts them.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::json;
use testkit::tools::{check, run, temp_dir, yaml_file};

use crate::{dashboard, root, tool};

/// The dashboard matches the `Dashboard` type of the pinned `@grafana/schema` (converted to a
/// JSON Schema by ts-json-schema-generator), and a broken copy does not.
#[test]
fn grafana_dashboard_matches_the_grafana_schema() {
    let checker = tool("check-jsonschema");
    let schema_dir = root().join("deploy/grafana/schema");
    let generator = schema_dir.join("node_modules/.bin/ts-json-schema-generator");
    let types =
        schema_dir.join("node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts");
    assert!(
        generator.is_file() && types.is_file(),
        "deploy/grafana/schema/node_modules is missing: run `bash .ci/setup-deploy`"
    );
    let tmp = temp_dir("grafana-schema");
    let schema = tmp.path().join("dashboard.schema.json");
    // the .d.ts files import types the package does not ship: no type check, the shapes are
    // all that matter here
    check(
        Command::new(&generator)
            .arg("--path")
            .arg(&types)
            .args(["--type", "Dashboard", "--no-type-check", "-o"])
            .arg(&schema)
            .current_dir(&schema_dir),
    );
    let dash_path = root().join("deploy/grafana/dashboards/gateway-cluster.json");
    check(
        Command::new(&checker)
            .arg("--schemafile")
            .arg(&schema)
            .arg(&dash_path),
    );
    // a misspelt panel key must be refused, or the check proves nothing
    let mut broken = dashboard();
    broken["panels"][1]["gridPoss"] = json!({"h": 1});
    let broken_path = tmp.path().join("broken.json");
    std::fs::write(&broken_path, broken.to_string()).expect("write broken copy");
    let out = run(Command::new(&checker)
        .arg("--schemafile")
        .arg(&schema)
        .arg(&broken_path));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stdout).contains("gridPoss"),
        "the schema accepted an unknown panel key:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Dashboard structure that no schema checks: unique ids, no overlapping panels, every panel
/// has a question that PANELS.md repeats, queries go through the datasource variable, and the
/// provisioning files point where docker-compose mounts them.
#[test]
fn dashboard_layout_panels_doc_and_provisioning_agree() {
    let d = dashboard();
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut cells = BTreeMap::new();
    let panels_md = std::fs::read_to_string(root().join("deploy/grafana/PANELS.md"))
        .expect("deploy/grafana/PANELS.md");
    for p in panels {
        let id = p["id"].as_u64().expect("panel id");
        let title = p["title"].as_str().expect("panel title");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().expect("x"),
            g["y"].as_u64().expect("y"),
            g["w"].as_u64().expect("w"),
            g["h"].as_u64().expect("h"),
        );
        assert!(x + w <= 24, "{title} is wider than the grid");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.to_string()) {
                    panic!("panels {other:?} and {title:?} overlap at ({cx}, {cy})");
                }
            }
        }
        if p["type"] == "row" {
            continue;
        }
        let question = p["description"].as_str().unwrap_or("");
        assert!(question.contains('?'), "{title}: no question");
        assert!(
            panels_md.contains(&format!("| {title} | {question} |")),
            "PANELS.md lacks the row for panel {title:?}"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }

    let prov = root().join("deploy/grafana/provisioning");
    let ds = yaml_file(&prov.join("datasources/prometheus.yml"));
    let ds_uid = ds["datasources"][0]["uid"]
        .as_str()
        .expect("datasource uid");
    let var = d["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("datasource variable");
    assert_eq!(var["current"]["value"], ds_uid);
    assert_eq!(ds["datasources"][0]["url"], "http://prometheus:9090");

    let provider = yaml_file(&prov.join("dashboards/gateway.yml"));
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    let compose = yaml_file(&root().join("docker-compose.yml"));
    let mounts: Vec<String> = compose["services"]["grafana"]["volumes"]
        .as_array()
        .expect("grafana volumes")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./deploy/grafana/dashboards:") && m.contains(path)),
        "compose does not mount the dashboards at {path}: {mounts:?}"
    );
    assert!(mounts
        .iter()
        .any(|m| m.starts_with("./deploy/grafana/provisioning:/etc/grafana/provisioning")));
    let home = compose["services"]["grafana"]["environment"]
        ["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .expect("home dashboard");
    assert_eq!(home, format!("{path}/gateway-cluster.json"));
}
