//! The shipped monitoring files, read with parsers of their own: the Prometheus alerting
//! rules (`config/prometheus/keyprov-alerts.yaml`, serde_yaml into typed structs) and the
//! Grafana dashboard (`config/grafana/keyprov-dashboard.json`, serde_json). Every PromQL
//! expression in either is parsed by promql-parser, and every metric it selects must be
//! one keyprov exposes (`KEYPROV_METRICS`), with labels that metric has: a misspelled
//! metric or label name fails here instead of silently drawing an empty panel or an
//! alert that can never fire.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use promql_parser::label::{MatchOp, Matchers};
use promql_parser::parser::{self, Expr, LabelModifier, VectorSelector};
use serde::Deserialize;
use serde_json::Value;

use Kind::{Counter, Gauge, Histogram};
use common::metric_list::{KEYPROV_METRICS, Kind};

/// The series Prometheus itself records for every scrape target (not keyprov's).
const SCRAPE_SERIES: &[&str] = &["up"];
/// Labels Prometheus attaches to every series of a target.
const TARGET_LABELS: &[&str] = &["job", "instance"];

const RULES: &str = "config/prometheus/keyprov-alerts.yaml";
const DASHBOARD: &str = "config/grafana/keyprov-dashboard.json";

/// What a series name resolves to.
#[derive(Debug)]
struct Series {
    /// Only meaningful through rate()/irate()/increase(): a counter, or a histogram's
    /// `_bucket`, `_sum` and `_count`.
    monotonic: bool,
    labels: BTreeSet<&'static str>,
}

fn resolve(name: &str) -> Option<Series> {
    let with = |own: &[&'static str], extra: &[&'static str], monotonic| Series {
        monotonic,
        labels: own
            .iter()
            .chain(extra)
            .chain(TARGET_LABELS)
            .copied()
            .collect(),
    };
    if SCRAPE_SERIES.contains(&name) {
        return Some(with(&[], &[], false));
    }
    for &(metric, kind, labels) in KEYPROV_METRICS {
        match kind {
            Gauge | Counter if name == metric => return Some(with(labels, &[], kind == Counter)),
            Histogram => match name.strip_prefix(metric) {
                Some("_bucket") => return Some(with(labels, &["le"], true)),
                Some("_sum" | "_count") => return Some(with(labels, &[], true)),
                _ => {}
            },
            _ => {}
        }
    }
    None
}

/// Every label name any known series can carry.
fn all_labels() -> BTreeSet<&'static str> {
    KEYPROV_METRICS
        .iter()
        .flat_map(|(_, _, labels)| labels.iter())
        .chain(TARGET_LABELS)
        .chain(&["le"])
        .copied()
        .collect()
}

/// Parses `source` as PromQL and checks every selector in it: a known metric name
/// (literal, or `__name__="…"`), only labels that metric has, and counters only inside
/// rate(), irate() or increase(). Returns the metric names it selects.
fn check_promql(source: &str) -> Result<BTreeSet<String>, Vec<String>> {
    let expr = parser::parse(source).map_err(|e| vec![format!("does not parse: {e}")])?;
    let mut walk = Walk::default();
    walk.expr(&expr);
    if walk.errors.is_empty() {
        Ok(walk.names)
    } else {
        Err(walk.errors)
    }
}

#[derive(Default)]
struct Walk {
    names: BTreeSet<String>,
    errors: Vec<String>,
}

impl Walk {
    fn expr(&mut self, expr: &Expr) {
        match expr {
            Expr::Aggregate(agg) => {
                if let Some(modifier) = &agg.modifier {
                    self.grouping(modifier);
                }
                if let Some(param) = &agg.param {
                    self.expr(param);
                }
                self.expr(&agg.expr);
            }
            Expr::Unary(unary) => self.expr(&unary.expr),
            Expr::Binary(binary) => {
                if let Some(modifier) = &binary.modifier {
                    if let Some(matching) = &modifier.matching {
                        self.grouping(matching);
                    }
                    if let Some(labels) = modifier.card.labels() {
                        self.label_names(&labels.labels);
                    }
                }
                self.expr(&binary.lhs);
                self.expr(&binary.rhs);
            }
            Expr::Paren(paren) => self.expr(&paren.expr),
            Expr::Subquery(sub) => self.expr(&sub.expr),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
            Expr::VectorSelector(vs) => self.selector(vs, false),
            Expr::MatrixSelector(ms) => self.selector(&ms.vs, false),
            Expr::Call(call) => {
                let counter_fn = matches!(call.func.name, "rate" | "irate" | "increase");
                for arg in &call.args.args {
                    match arg.as_ref() {
                        Expr::MatrixSelector(ms) if counter_fn => self.selector(&ms.vs, true),
                        other => self.expr(other),
                    }
                }
            }
            Expr::Extension(_) => self.errors.push("unexpected extension node".into()),
        }
    }

    fn grouping(&mut self, modifier: &LabelModifier) {
        self.label_names(&modifier.labels().labels);
    }

    fn label_names(&mut self, labels: &[String]) {
        let known = all_labels();
        for label in labels {
            if !known.contains(label.as_str()) {
                self.errors
                    .push(format!("label `{label}` is on no keyprov metric"));
            }
        }
    }

    fn selector(&mut self, vs: &VectorSelector, in_counter_fn: bool) {
        let Some(name) = metric_name(vs) else {
            self.errors.push(format!(
                "selector `{vs}` has no literal metric name, so it cannot be checked"
            ));
            return;
        };
        let Some(series) = resolve(&name) else {
            self.errors.push(format!("unknown metric `{name}`"));
            return;
        };
        if series.monotonic && !in_counter_fn {
            self.errors.push(format!(
                "`{name}` is a counter: use it inside rate(), irate() or increase()"
            ));
        }
        let matchers = vs
            .matchers
            .matchers
            .iter()
            .chain(vs.matchers.or_matchers.iter().flatten());
        for matcher in matchers {
            if matcher.name != "__name__" && !series.labels.contains(matcher.name.as_str()) {
                self.errors
                    .push(format!("`{name}` has no label `{}`", matcher.name));
            }
        }
        self.names.insert(name);
    }
}

fn metric_name(vs: &VectorSelector) -> Option<String> {
    vs.name.clone().or_else(|| name_matcher(&vs.matchers))
}

fn name_matcher(matchers: &Matchers) -> Option<String> {
    matchers
        .matchers
        .iter()
        .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
        .map(|m| m.value.clone())
}

/// Go-template actions must open and close in pairs, never nested: `{{ … }}`.
fn check_template(text: &str) -> Result<(), String> {
    let mut rest = text;
    loop {
        let open = rest.find("{{");
        let close = rest.find("}}");
        match (open, close) {
            (None, None) => return Ok(()),
            (Some(o), Some(c)) if o < c => {
                let inner = &rest[o + 2..c];
                if inner.contains("{{") {
                    return Err(format!("`{{{{` inside an action in {text:?}"));
                }
                if inner.trim().is_empty() {
                    return Err(format!("empty action in {text:?}"));
                }
                rest = &rest[c + 2..];
            }
            (Some(_), None) => return Err(format!("unclosed `{{{{` in {text:?}")),
            (_, Some(_)) => return Err(format!("`}}}}` without `{{{{` in {text:?}")),
        }
    }
}

fn identifier(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Label names an alert template reads as `$labels.NAME`.
fn alert_template_labels(text: &str) -> Vec<String> {
    text.split("$labels.").skip(1).map(identifier).collect()
}

/// Label names a Grafana legend reads as `{{NAME}}` or `{{ NAME }}`.
fn legend_labels(text: &str) -> Vec<String> {
    text.split("{{")
        .skip(1)
        .map(|action| action.split("}}").next().unwrap_or("").trim())
        .filter(|inner| identifier(inner) == *inner)
        .map(String::from)
        .collect()
}

// ---------------------------------------------------------------- alerting rules

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    #[serde(default)]
    interval: Option<String>,
    /// Accepted as Prometheus does; nothing to check.
    #[serde(default)]
    #[allow(dead_code)]
    limit: Option<u64>,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(default)]
    alert: Option<String>,
    #[serde(default)]
    record: Option<String>,
    expr: String,
    #[serde(default, rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

const SEVERITIES: &[&str] = &["critical", "warning", "info"];

/// Every problem of a rules file; empty when it is fine.
fn check_rules(yaml: &str) -> Result<(Vec<String>, BTreeSet<String>), String> {
    let file: RuleFile = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    let mut alerts = Vec::new();
    let mut names = BTreeSet::new();
    let labels = all_labels();
    for group in &file.groups {
        if group.name.trim().is_empty() {
            problems.push("a group without a name".to_string());
        }
        if let Some(interval) = &group.interval
            && let Err(e) = promql_parser::util::parse_duration(interval)
        {
            problems.push(format!("group {}: interval {interval:?}: {e}", group.name));
        }
        for rule in &group.rules {
            let name = rule.alert.as_ref().or(rule.record.as_ref());
            let p = |msg: String| format!("{}: {msg}", name.map_or("(unnamed rule)", |n| n));
            match check_promql(&rule.expr) {
                Ok(found) => names.extend(found),
                Err(errors) => problems.extend(errors.into_iter().map(|e| p(format!("expr: {e}")))),
            }
            let alert = match (&rule.alert, &rule.record) {
                (Some(alert), None) => alert,
                // A recording rule: only its expression is checked.
                (None, Some(_)) => continue,
                _ => {
                    problems.push(p("a rule needs exactly one of alert and record".into()));
                    continue;
                }
            };
            if alerts.contains(alert) {
                problems.push(p("alert name used twice".into()));
            }
            alerts.push(alert.clone());
            if !alert.starts_with("Keyprov") || !alert.chars().all(|c| c.is_ascii_alphanumeric()) {
                problems.push(p("alert names are KeyprovCamelCase".into()));
            }
            for (field, value) in [
                ("for", &rule.for_),
                ("keep_firing_for", &rule.keep_firing_for),
            ] {
                match value {
                    Some(d) => {
                        if let Err(e) = promql_parser::util::parse_duration(d) {
                            problems.push(p(format!("{field}: {d:?} is not a duration: {e}")));
                        }
                    }
                    None if field == "for" => {
                        problems.push(p("no `for`: one bad scrape would page".into()))
                    }
                    None => {}
                }
            }
            match rule.labels.get("severity") {
                Some(s) if SEVERITIES.contains(&s.as_str()) => {}
                other => problems.push(p(format!(
                    "severity {other:?} is not one of {SEVERITIES:?}"
                ))),
            }
            for required in ["summary", "description", "runbook"] {
                if rule
                    .annotations
                    .get(required)
                    .is_none_or(|s| s.trim().is_empty())
                {
                    problems.push(p(format!("no `{required}` annotation")));
                }
            }
            if let Some(runbook) = rule.annotations.get("runbook")
                && !runbook.contains("keyprov status")
                && !runbook.contains("keyprov plan")
            {
                problems.push(p(
                    "the runbook names neither `keyprov status` nor `keyprov plan`".into(),
                ));
            }
            for text in rule.annotations.values().chain(rule.labels.values()) {
                if let Err(e) = check_template(text) {
                    problems.push(p(e));
                }
                for label in alert_template_labels(text) {
                    if !labels.contains(label.as_str()) {
                        problems.push(p(format!(
                            "template reads $labels.{label}, a label on no keyprov metric"
                        )));
                    }
                }
            }
        }
    }
    Ok((problems, names))
}

const REQUIRED_ALERTS: &[&str] = &[
    "KeyprovRotationOverdue",
    "KeyprovKeyNotReady",
    "KeyprovFailuresRising",
    "KeyprovReconcileStale",
    "KeyprovManifestInvalid",
    "KeyprovDown",
];

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[test]
fn alert_rules_parse_and_use_only_known_metrics() {
    let yaml = read(RULES);
    let (problems, names) = check_rules(&yaml).expect("rules file does not deserialize");
    assert!(problems.is_empty(), "{RULES}:\n  {}", problems.join("\n  "));

    let file: RuleFile = serde_yaml::from_str(&yaml).unwrap();
    let alerts: BTreeSet<&str> = file
        .groups
        .iter()
        .flat_map(|g| &g.rules)
        .filter_map(|r| r.alert.as_deref())
        .collect();
    for required in REQUIRED_ALERTS {
        assert!(alerts.contains(required), "{RULES}: no alert {required}");
    }
    for used in [
        "keyprov_key_rotation_due_timestamp_seconds",
        "keyprov_key_ready",
        "keyprov_failures_total",
        "keyprov_last_successful_reconcile_timestamp_seconds",
        "keyprov_manifest_valid",
        "up",
    ] {
        assert!(names.contains(used), "{RULES}: no alert reads {used}");
    }
}

// ---------------------------------------------------------------- dashboard

const DATASOURCE_VAR: &str = "datasource";

/// Replaces Grafana variables (`$name`, `${name}`, `${name:format}`, `[[name]]`) with
/// values PromQL accepts where they stand: a duration for the interval built-ins, a
/// plain word for the dashboard's own variables. Any other variable is an error.
fn substitute_grafana(expr: &str, variables: &BTreeSet<String>) -> Result<String, String> {
    let value = |name: &str| -> Result<&'static str, String> {
        match name {
            "__rate_interval" | "__interval" | "__range" => Ok("5m"),
            _ if variables.contains(name) => Ok("x"),
            _ => Err(format!("unknown variable `{name}` in {expr:?}")),
        }
    };
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(i) = rest.find(['$', '[']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(braced) = tail.strip_prefix("${") {
            let end = braced
                .find('}')
                .ok_or(format!("unclosed `${{` in {expr:?}"))?;
            let name = braced[..end].split(':').next().unwrap_or("");
            out.push_str(value(name)?);
            rest = &braced[end + 1..];
        } else if let Some(bracketed) = tail.strip_prefix("[[") {
            let end = bracketed
                .find("]]")
                .ok_or(format!("unclosed `[[` in {expr:?}"))?;
            let name = bracketed[..end].split(':').next().unwrap_or("");
            out.push_str(value(name)?);
            rest = &bracketed[end + 2..];
        } else if let Some(plain) = tail.strip_prefix('$') {
            let len = plain
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(plain.len());
            if len == 0 {
                return Err(format!("lone `$` in {expr:?}"));
            }
            out.push_str(value(&plain[..len])?);
            rest = &plain[len..];
        } else {
            out.push('[');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `label_values(selector, label)`: Grafana's query for a variable's values.
fn check_label_values(query: &str, variables: &BTreeSet<String>) -> Result<String, String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .ok_or(format!("not label_values(selector, label): {query:?}"))?;
    let (selector, label) = inner
        .rsplit_once(',')
        .ok_or(format!("label_values needs a metric selector: {query:?}"))?;
    let (selector, label) = (selector.trim(), label.trim());
    let expanded = substitute_grafana(selector, variables)?;
    let names = check_promql(&expanded).map_err(|e| format!("{query:?}: {}", e.join("; ")))?;
    let name = names.first().ok_or(format!("{query:?}: no metric"))?;
    let series = resolve(name).expect("checked by check_promql");
    if !series.labels.contains(label) {
        return Err(format!("{query:?}: `{name}` has no label `{label}`"));
    }
    Ok(name.clone())
}

fn expected_datasource() -> Value {
    serde_json::json!({"type": "prometheus", "uid": format!("${{{DATASOURCE_VAR}}}")})
}

/// Every problem of a dashboard; empty when it is fine. Also returns the metrics it reads.
fn check_dashboard(json: &str) -> Result<(Vec<String>, BTreeSet<String>), String> {
    let dash: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();

    match dash["schemaVersion"].as_u64() {
        Some(v) if (36..=41).contains(&v) => {}
        other => problems.push(format!("schemaVersion {other:?}: expected 36 to 41")),
    }
    for field in ["title", "uid"] {
        if dash[field].as_str().is_none_or(str::is_empty) {
            problems.push(format!("no dashboard {field}"));
        }
    }

    // Template variables.
    let vars = dash["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let var_names: BTreeSet<String> = vars
        .iter()
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect();
    if var_names.len() != vars.len() {
        problems.push("template variables without a name, or with the same name".into());
    }
    let ds_var = vars.iter().find(|v| v["name"] == DATASOURCE_VAR);
    if !ds_var.is_some_and(|v| v["type"] == "datasource" && v["query"] == "prometheus") {
        problems.push(format!(
            "no `{DATASOURCE_VAR}` variable of type datasource, query prometheus"
        ));
    }
    let mut key_var_query = None;
    for var in vars.iter().filter(|v| v["type"] == "query") {
        let name = var["name"].as_str().unwrap_or("?");
        let query = var["definition"]
            .as_str()
            .or(var["query"]["query"].as_str())
            .or(var["query"].as_str())
            .unwrap_or("");
        if var["query"]["query"].as_str().is_some_and(|q| q != query) {
            problems.push(format!(
                "variable {name}: definition and query.query differ"
            ));
        }
        match check_label_values(query, &var_names) {
            Ok(metric) => {
                if name == "key" {
                    key_var_query = Some(metric.clone());
                }
                names.insert(metric);
            }
            Err(e) => problems.push(format!("variable {name}: {e}")),
        }
    }
    if key_var_query.as_deref() != Some("keyprov_key_info") {
        problems.push("no `key` variable from label_values(keyprov_key_info…, key)".into());
    }

    // Every datasource reference: the Prometheus variable, or Grafana's own annotations.
    let expected = expected_datasource();
    let mut refs = Vec::new();
    collect_datasources(&dash, "", &mut refs);
    for (path, ds) in refs {
        let builtin = ds["type"] == "grafana" && path.starts_with("/annotations");
        if ds != expected && !builtin {
            problems.push(format!("{path}: datasource {ds} is not {expected}"));
        }
    }

    // Panels: ids, layout, queries.
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    // (panel, inside a collapsed row): those keep the layout they have when expanded.
    let mut panels = Vec::new();
    for panel in dash["panels"].as_array().into_iter().flatten() {
        panels.push((panel, false));
        panels.extend(
            panel["panels"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| (p, true)),
        );
    }
    if panels.is_empty() {
        problems.push("no panels".into());
    }
    let known_labels = all_labels();
    for (panel, in_collapsed_row) in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)").to_string();
        match panel["id"].as_u64() {
            Some(id) if ids.insert(id) => {}
            Some(id) => problems.push(format!("panel {title}: id {id} used twice")),
            None => problems.push(format!("panel {title}: no numeric id")),
        }
        let grid = &panel["gridPos"];
        let pos: Option<Vec<u64>> = ["x", "y", "w", "h"]
            .iter()
            .map(|k| grid[*k].as_u64())
            .collect();
        match pos.as_deref() {
            Some(&[x, y, w, h]) if w > 0 && h > 0 && x + w <= 24 => {
                if !in_collapsed_row {
                    for (other, [ox, oy, ow, oh]) in &boxes {
                        if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                            problems.push(format!("panel {title} overlaps panel {other}"));
                        }
                    }
                    boxes.push((title.clone(), [x, y, w, h]));
                }
            }
            _ => problems.push(format!(
                "panel {title}: gridPos {grid} is not x, y, w, h within 24 columns"
            )),
        }
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title}: no targets"));
        }
        let mut ref_ids = BTreeSet::new();
        for target in &targets {
            let ref_id = target["refId"].as_str().unwrap_or("");
            if !ref_ids.insert(ref_id.to_string()) || ref_id.is_empty() {
                problems.push(format!(
                    "panel {title}: refId {ref_id:?} missing or repeated"
                ));
            }
            let Some(expr) = target["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
                problems.push(format!("panel {title} {ref_id}: no expr"));
                continue;
            };
            let expanded = match substitute_grafana(expr, &var_names) {
                Ok(expanded) => expanded,
                Err(e) => {
                    problems.push(format!("panel {title} {ref_id}: {e}"));
                    continue;
                }
            };
            match check_promql(&expanded) {
                Ok(found) => names.extend(found),
                Err(errors) => problems.extend(
                    errors
                        .into_iter()
                        .map(|e| format!("panel {title} {ref_id}: {e}\n    in {expanded}")),
                ),
            }
            if let Some(legend) = target["legendFormat"].as_str() {
                if let Err(e) = check_template(legend) {
                    problems.push(format!("panel {title} {ref_id}: legend: {e}"));
                }
                for label in legend_labels(legend) {
                    if !known_labels.contains(label.as_str()) {
                        problems.push(format!("panel {title} {ref_id}: legend reads `{label}`, a label on no keyprov metric"));
                    }
                }
            }
        }
    }
    Ok((problems, names))
}

fn collect_datasources(value: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let here = format!("{path}/{k}");
                if k == "datasource" {
                    out.push((here, v.clone()));
                } else {
                    collect_datasources(v, &here, out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_datasources(v, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn dashboard_parses_and_uses_only_known_metrics() {
    let json = read(DASHBOARD);
    let (problems, names) = check_dashboard(&json).expect("dashboard is not JSON");
    assert!(
        problems.is_empty(),
        "{DASHBOARD}:\n  {}",
        problems.join("\n  ")
    );
    // Every keyprov metric is on the dashboard somewhere.
    for (metric, kind, _) in KEYPROV_METRICS {
        let shown = match kind {
            Histogram => names.iter().any(|n| n.starts_with(metric)),
            _ => names.contains(*metric),
        };
        assert!(shown, "{DASHBOARD}: no panel reads {metric}");
    }
}

// ---------------------------------------------------------------- the checkers can fail

#[test]
fn promql_checker_accepts_known_names_at_any_depth() {
    let names = check_promql(
        "sum by (key) (increase(keyprov_failures_total{reason=\"kms_throttled\"}[15m])) \
         / on (key) group_left max by (key) (keyprov_key_ready) \
         or absent(up{job=\"keyprov\"}) \
         or histogram_quantile(0.9, sum by (le) (rate(keyprov_reconcile_duration_seconds_bucket[5m]))) \
         or quantile(scalar(keyprov_build_info), {__name__=\"keyprov_manifest_valid\"})",
    )
    .unwrap();
    let expected: BTreeSet<String> = [
        "keyprov_failures_total",
        "keyprov_key_ready",
        "up",
        "keyprov_reconcile_duration_seconds_bucket",
        "keyprov_build_info",
        "keyprov_manifest_valid",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, expected);
}

#[test]
fn promql_checker_rejects_mistakes() {
    for (expr, why) in [
        ("keyprov_key_redy == 0", "unknown metric `keyprov_key_redy`"),
        (
            "sum(rate(keyprov_failure_total[5m]))",
            "unknown metric `keyprov_failure_total`",
        ),
        (
            "max(abs(time() - keyprov_key_rotation_due_timestamp_second))",
            "unknown metric",
        ),
        ("{__name__=\"keyprov_key_readyy\"}", "unknown metric"),
        ("{__name__=~\"keyprov_.*\"}", "no literal metric name"),
        ("keyprov_reconcile_duration_seconds", "unknown metric"),
        ("keyprov_failures_total > 0", "is a counter"),
        (
            "rate(keyprov_provider_request_duration_seconds_count[5m]) / keyprov_provider_request_duration_seconds_sum",
            "is a counter",
        ),
        ("keyprov_key_ready{kee=\"a\"}", "has no label `kee`"),
        ("sum by (kee) (keyprov_key_ready)", "label `kee`"),
        ("keyprov_key_ready ==", "does not parse"),
        ("rate(keyprov_failures_total[5x])", "does not parse"),
    ] {
        let errors = check_promql(expr).expect_err(expr);
        assert!(
            errors.iter().any(|e| e.contains(why)),
            "{expr}: expected {why:?}, got {errors:?}"
        );
    }
}

#[test]
fn template_checker_rejects_unbalanced_actions() {
    assert!(check_template("key {{ $labels.key }} is {{ $value | humanizeDuration }}").is_ok());
    assert!(check_template("no templates at all").is_ok());
    for bad in [
        "key {{ $labels.key }",
        "key {{ $labels.key",
        "key $labels.key }}",
        "{{ {{ $labels.key }} }}",
        "{{ }}",
    ] {
        assert!(check_template(bad).is_err(), "{bad}");
    }
    assert_eq!(
        alert_template_labels("{{ $labels.key }} {{ with $labels.instance }}{{ . }}{{ end }}"),
        ["key", "instance"]
    );
    assert_eq!(legend_labels("{{key}} {{ reason }} p95"), ["key", "reason"]);
}

#[test]
fn grafana_substitution_rejects_unknown_variables() {
    let vars: BTreeSet<String> = ["key".to_string(), "job".to_string()].into();
    assert_eq!(
        substitute_grafana(
            "rate(m{key=~\"$key\", job=\"${job:regex}\"}[$__rate_interval])[1h:$__interval] [[key]]",
            &vars
        )
        .unwrap(),
        "rate(m{key=~\"x\", job=\"x\"}[5m])[1h:5m] x"
    );
    assert!(substitute_grafana("m{key=~\"$kee\"}", &vars).is_err());
    assert!(substitute_grafana("m{key=~\"${kee}\"}", &vars).is_err());
}

#[test]
fn rules_checker_rejects_mistakes() {
    let good = r#"
groups:
  - name: g
    rules:
      - alert: KeyprovX
        expr: keyprov_key_ready == 0
        for: 10m
        labels: {severity: critical}
        annotations:
          summary: "{{ $labels.key }} not ready"
          description: d
          runbook: run `keyprov status`
"#;
    let (problems, _) = check_rules(good).unwrap();
    assert!(problems.is_empty(), "{problems:?}");

    // A misspelled field is an error, not a silently ignored key.
    assert!(check_rules(&good.replace("expr:", "expression:")).is_err());
    assert!(check_rules(&good.replace("annotations:", "anotations:")).is_err());

    for (from, to, why) in [
        (
            "keyprov_key_ready ==",
            "keyprov_key_redy ==",
            "unknown metric",
        ),
        ("for: 10m", "for: 10 minutes", "not a duration"),
        ("for: 10m", "for: 10x", "not a duration"),
        ("severity: critical", "severity: page", "severity"),
        ("{{ $labels.key }} not", "{{ $labels.key } not", "unclosed"),
        (
            "{{ $labels.key }} not",
            "{{ $labels.kye }} not",
            "$labels.kye",
        ),
        ("run `keyprov status`", "look at the logs", "runbook"),
        ("description: d", "description: \"\"", "no `description`"),
    ] {
        let broken = good.replace(from, to);
        assert_ne!(broken, good, "{from}");
        let (problems, _) = check_rules(&broken).unwrap();
        assert!(
            problems.iter().any(|p| p.contains(why)),
            "{to}: expected {why:?}, got {problems:?}"
        );
    }
}

#[test]
fn dashboard_checker_rejects_mistakes() {
    let good = read(DASHBOARD);
    let (problems, _) = check_dashboard(&good).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    for (from, to, why) in [
        (
            "keyprov_hook_runs_total{",
            "keyprov_hook_run_total{",
            "unknown metric",
        ),
        ("key=~\\\"$key\\\"", "key=~\\\"$kee\\\"", "unknown variable"),
        (
            "\"uid\": \"${datasource}\"",
            "\"uid\": \"prometheus\"",
            "datasource",
        ),
        ("\"id\": 2,", "\"id\": 1,", "used twice"),
        (
            "label_values(keyprov_key_info{",
            "label_values(keyprov_key_inf{",
            "variable key",
        ),
        (
            "\"legendFormat\": \"{{reason}}\"",
            "\"legendFormat\": \"{{reasn}}\"",
            "reasn",
        ),
    ] {
        let broken = good.replacen(from, to, 1);
        assert_ne!(broken, good, "{from}");
        let (problems, _) = check_dashboard(&broken).unwrap();
        assert!(
            problems.iter().any(|p| p.contains(why)),
            "{to}: expected {why:?}, got {problems:?}"
        );
    }
    // Two panels on the same spot.
    let mut dash: Value = serde_json::from_str(&good).unwrap();
    let first = dash["panels"][1]["gridPos"].clone();
    dash["panels"][2]["gridPos"] = first;
    let (problems, _) = check_dashboard(&dash.to_string()).unwrap();
    assert!(
        problems.iter().any(|p| p.contains("overlaps")),
        "{problems:?}"
    );
}
