//! The PromQL in deploy/: the Grafana dashboard's panel queries and the
//! alerting rules' expressions, as a Prometheus would be asked them.

use std::{fs, path::PathBuf};

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

pub const DASHBOARD: &str = "grafana/dbtel.json";
pub const RULES: &str = "prometheus/dbtel-rules.yml";

pub fn deploy_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy"))
}

fn read(name: &str) -> String {
    let path = deploy_dir().join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel of the dashboard but rows, those inside collapsed rows too
/// (an open row's panels follow it at the top level, a collapsed one holds them).
pub fn dashboard_panels() -> Vec<Json> {
    fn walk(panels: &[Json], out: &mut Vec<Json>) {
        for p in panels {
            if p["type"] == "row" {
                walk(p["panels"].as_array().map_or(&[], Vec::as_slice), out);
            } else {
                out.push(p.clone());
            }
        }
    }
    let dashboard: Json = serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("deploy/{DASHBOARD}: {e}"));
    let mut out = Vec::new();
    walk(
        dashboard["panels"].as_array().expect("a panels array"),
        &mut out,
    );
    out
}

/// Grafana's variables replaced as Grafana would with every system and
/// namespace selected ("All" sends the variables' allValue, `.*`).
pub fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "5s")
        .replace("$system", ".*")
        .replace("$namespace", ".*")
}

/// Every panel target's `expr`, variables substituted.
pub fn dashboard_exprs() -> Vec<String> {
    dashboard_panels()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(substitute))
        .collect()
}

/// (alert name, expression) of every rule in the rules file.
pub fn rule_exprs() -> Vec<(String, String)> {
    let rules: Yaml =
        serde_yaml_ng::from_str(&read(RULES)).unwrap_or_else(|e| panic!("deploy/{RULES}: {e}"));
    let groups = rules["groups"].as_sequence().expect("a groups list");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .map(|r| {
            let name = r
                .get("alert")
                .or_else(|| r.get("record"))
                .and_then(Yaml::as_str)
                .unwrap_or_else(|| panic!("a rule without a name: {r:?}"));
            let expr = r["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} has no expr"));
            (name.to_string(), expr.trim().to_string())
        })
        .collect()
}
