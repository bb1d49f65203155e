//! The Helm chart under test: a real helm, the chart's rendered objects, and the PromQL its
//! dashboards and alerts hold, with the metric names each query reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde::Deserialize as _;
use serde_json::Value;

/// Why the chart, helm or promtool could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// A `charts/fetch-*.sh` script failed (its output went to stderr).
    #[error("fetching a tool failed: {0}")]
    Fetch(String),
    /// helm or promtool ran and failed.
    #[error("{command}: {output}")]
    Tool {
        /// The command line.
        command: String,
        /// What it printed (stderr first).
        output: String,
    },
    /// A file of the chart could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
}

/// The chart's directory, `charts/coral`.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/coral")
}

/// A tool fetched into `.cache/` by one of the `charts/fetch-*.sh` scripts, which prints its
/// path; fetched once per process.
fn fetched(
    script: &str,
    once: &'static OnceLock<Result<PathBuf, String>>,
) -> Result<PathBuf, ChartError> {
    once.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../charts")
            .join(script);
        let output = Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|err| format!("{}: {err}", script.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{}: exit status {}",
                script.display(),
                output.status
            ));
        }
        Ok(PathBuf::from(
            String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        ))
    })
    .clone()
    .map_err(ChartError::Fetch)
}

/// A helm binary (v4), fetched by `charts/fetch-helm.sh` on first use.
pub fn helm_binary() -> Result<PathBuf, ChartError> {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    fetched("fetch-helm.sh", &HELM)
}

/// promtool (Prometheus 2.42), fetched by `charts/fetch-promtool.sh` on first use.
pub fn promtool_binary() -> Result<PathBuf, ChartError> {
    static PROMTOOL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    fetched("fetch-promtool.sh", &PROMTOOL)
}

/// Runs promtool with `args` in the chart's `alerts/` directory and returns what it printed.
pub fn promtool(args: &[&str]) -> Result<String, ChartError> {
    let mut command = Command::new(promtool_binary()?);
    command.args(args).current_dir(chart_dir().join("alerts"));
    let (stdout, stderr) = run(command, "promtool", args)?;
    Ok(stdout + &stderr)
}

/// Runs helm with `args` (and `KUBECONFIG` when given) and returns its stdout.
pub fn helm(args: &[&str], kubeconfig: Option<&Path>) -> Result<String, ChartError> {
    let mut command = Command::new(helm_binary()?);
    command.args(args);
    if let Some(kubeconfig) = kubeconfig {
        command.env("KUBECONFIG", kubeconfig);
    }
    // helm keeps its cache and config under HOME; keep them out of the user's.
    let home = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/helm-home");
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    run(command, "helm", args).map(|(stdout, _)| stdout)
}

/// Runs `command` (`name` with `args`, for messages): its stdout and stderr, or an error
/// holding what it printed when it fails.
fn run(mut command: Command, name: &str, args: &[&str]) -> Result<(String, String), ChartError> {
    let failed = |output: String| ChartError::Tool {
        command: format!("{name} {}", args.join(" ")),
        output,
    };
    let output = command.output().map_err(|err| failed(err.to_string()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok((stdout, stderr))
    } else {
        Err(failed(stderr + &stdout))
    }
}

/// `helm template` of the chart with `extra` arguments, as one JSON value per object.
pub fn render(extra: &[&str]) -> Result<Vec<Value>, ChartError> {
    let chart = chart_dir();
    let chart = chart.to_string_lossy();
    let mut args = vec!["template", "coral", &chart, "--namespace", "coral-system"];
    args.extend_from_slice(extra);
    let manifests = helm(&args, None)?;
    let mut objects = Vec::new();
    for document in serde_norway::Deserializer::from_str(&manifests) {
        let value = Value::deserialize(document).map_err(|err| ChartError::File {
            path: PathBuf::from("helm template output"),
            message: err.to_string(),
        })?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// One PromQL query of a dashboard or an alert, and where it is.
#[derive(Clone, Debug)]
pub struct Query {
    /// File and panel or alert, for messages.
    pub source: String,
    /// The query as written (Grafana variables included).
    pub expr: String,
}

/// Every dashboard of the chart, by file name, parsed.
pub fn dashboards() -> Result<Vec<(String, Value)>, ChartError> {
    let dir = chart_dir().join("dashboards");
    let read_error = |message: String| ChartError::File {
        path: dir.clone(),
        message,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|err| read_error(err.to_string()))?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|err| ChartError::File {
                path: path.clone(),
                message: err.to_string(),
            })?;
            let board = serde_json::from_str(&text).map_err(|err| ChartError::File {
                path: path.clone(),
                message: err.to_string(),
            })?;
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            Ok((name.into_owned(), board))
        })
        .collect()
}

/// The queries of every dashboard's panels (those folded into collapsed rows included),
/// variables and annotations.
pub fn dashboard_queries() -> Result<Vec<Query>, ChartError> {
    let mut queries = Vec::new();
    let list = |value: &Value| value.as_array().cloned().unwrap_or_default();
    for (file, board) in dashboards()? {
        let panels = list(&board["panels"])
            .into_iter()
            .flat_map(|panel| std::iter::once(panel.clone()).chain(list(&panel["panels"])));
        for panel in panels {
            for target in list(&panel["targets"]) {
                queries.push(Query {
                    source: format!("{file}: panel \"{}\"", text(&panel["title"])),
                    expr: text(&target["expr"]).to_owned(),
                });
            }
        }
        // A variable's `label_values(<selector>, <label>)` reads the selector.
        for variable in list(&board["templating"]["list"]) {
            let Some(query) = variable["query"]["query"].as_str() else {
                continue;
            };
            let selector = query
                .strip_prefix("label_values(")
                .and_then(|inner| inner.rsplit_once(','))
                .map_or(query, |(selector, _)| selector);
            queries.push(Query {
                source: format!("{file}: variable \"{}\"", text(&variable["name"])),
                expr: selector.to_owned(),
            });
        }
        for annotation in list(&board["annotations"]["list"]) {
            if let Some(expr) = annotation["expr"].as_str() {
                queries.push(Query {
                    source: format!("{file}: annotation \"{}\"", text(&annotation["name"])),
                    expr: expr.to_owned(),
                });
            }
        }
    }
    Ok(queries)
}

/// A JSON string's text, or nothing.
fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// The alert rules file, `alerts/coral.rules.yaml`, parsed.
pub fn alert_rules() -> Result<Value, ChartError> {
    let path = chart_dir().join("alerts/coral.rules.yaml");
    let text = std::fs::read_to_string(&path).map_err(|err| ChartError::File {
        path: path.clone(),
        message: err.to_string(),
    })?;
    serde_norway::from_str(&text).map_err(|err| ChartError::File {
        path,
        message: err.to_string(),
    })
}

/// The query of every alert.
pub fn alert_queries() -> Result<Vec<Query>, ChartError> {
    let rules = alert_rules()?;
    let mut queries = Vec::new();
    for group in rules["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            queries.push(Query {
                source: format!(
                    "coral.rules.yaml: alert {}",
                    rule["alert"].as_str().unwrap_or("")
                ),
                expr: rule["expr"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    Ok(queries)
}

/// A series selector of a query: the metric and the label matchers.
#[derive(Clone, Debug)]
pub struct Selector {
    /// The metric name.
    pub metric: String,
    /// The label matchers (the metric name's own excluded).
    pub matchers: Vec<Matcher>,
}

/// The selectors of `expr`, once Grafana's variables are given plain values; an error when it
/// is not valid PromQL or a selector names no metric.
pub fn selectors(expr: &str) -> Result<Vec<Selector>, String> {
    let plain = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$namespace", ".*");
    let parsed = parser::parse(&plain)?;
    let mut found = Selectors(Vec::new());
    walk_expr(&mut found, &parsed)?;
    Ok(found.0)
}

/// The metric names `expr` reads (see [`selectors`]).
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    Ok(selectors(expr)?
        .into_iter()
        .map(|selector| selector.metric)
        .collect())
}

struct Selectors(Vec<Selector>);

impl ExprVisitor for Selectors {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let selector = match expr {
            Expr::VectorSelector(selector) => selector,
            Expr::MatrixSelector(matrix) => &matrix.vs,
            _ => return Ok(true),
        };
        let metric = selector
            .name
            .clone()
            .ok_or_else(|| format!("a selector without a metric name: {selector}"))?;
        self.0.push(Selector {
            metric,
            matchers: selector.matchers.matchers.clone(),
        });
        Ok(true)
    }
}

/// One series of a Prometheus text exposition: its name and labels.
pub type Series = (String, BTreeMap<String, String>);

/// The series of a Prometheus text exposition (histograms as their `_bucket`, `_sum` and
/// `_count` series).
pub fn exported_series(exposition: &str) -> Vec<Series> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let labels = line[name_end..]
                .strip_prefix('{')
                .map(parse_labels)
                .unwrap_or_default();
            (line[..name_end].to_owned(), labels)
        })
        .collect()
}

/// `a="x",b="y"}...` as a map (escaped quotes and backslashes in values undone).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => value.extend(chars.next().map(|(_, escaped)| escaped)),
                '"' => {
                    end = at + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        labels.insert(name.trim_start_matches(',').to_owned(), value);
        rest = &after[end..];
        if rest.starts_with('}') {
            break;
        }
    }
    labels
}

/// The names of the series in a Prometheus text exposition.
pub fn exported_names(exposition: &str) -> BTreeSet<String> {
    exported_series(exposition)
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// Labels a scrape adds to every series: a query may match them freely.
const TARGET_LABELS: [&str; 5] = ["namespace", "instance", "job", "pod", "container"];

/// What `selector` asks for that no series in `exported` has: its metric, or a label value
/// an equality or regex matcher requires (each literal of an alternation such as `a|b`).
pub fn unmatched(selector: &Selector, exported: &[Series]) -> Vec<String> {
    let series: Vec<&BTreeMap<String, String>> = exported
        .iter()
        .filter(|(name, _)| *name == selector.metric)
        .map(|(_, labels)| labels)
        .collect();
    if series.is_empty() {
        return vec![selector.metric.clone()];
    }
    let mut missing = Vec::new();
    for matcher in &selector.matchers {
        if TARGET_LABELS.contains(&matcher.name.as_str()) {
            continue;
        }
        let wanted: Vec<String> = match &matcher.op {
            MatchOp::Equal => vec![matcher.value.clone()],
            MatchOp::Re(_)
                if matcher
                    .value
                    .chars()
                    .all(|c| c.is_alphanumeric() || "_|-".contains(c)) =>
            {
                matcher.value.split('|').map(str::to_owned).collect()
            }
            MatchOp::Re(_) => {
                if !series.iter().any(|labels| {
                    matcher.is_match(labels.get(&matcher.name).map_or("", String::as_str))
                }) {
                    missing.push(format!("{}{{{}}}", selector.metric, matcher));
                }
                continue;
            }
            MatchOp::NotEqual | MatchOp::NotRe(_) => continue,
        };
        for value in wanted {
            if !series
                .iter()
                .any(|labels| labels.get(&matcher.name) == Some(&value))
            {
                missing.push(format!(
                    "{}{{{}=\"{value}\"}}",
                    selector.metric, matcher.name
                ));
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_selectors_not_from_labels_or_functions() {
        let names = metric_names(
            "sum by (zone) (rate(coral_a_total{namespace=~\"$namespace\",coral_cluster=\"x\"}[$__rate_interval]) \
             * on (job, instance) group_left (zone) coral_node_info) or vector(0)",
        )
        .unwrap();
        assert_eq!(
            names,
            BTreeSet::from(["coral_a_total".to_owned(), "coral_node_info".to_owned()])
        );
    }

    #[test]
    fn invalid_promql_is_an_error() {
        assert!(metric_names("sum(rate(coral_a_total[5m])").is_err());
        assert!(metric_names("{job=\"x\"}").is_err());
    }

    #[test]
    fn a_selector_must_find_its_metric_and_each_label_value_it_asks_for() {
        let exported = exported_series(
            "c_total{namespace=\"x\",result=\"hit\",roles=\"dht,proxy\"} 1\nc_total{result=\"miss\"} 0\n",
        );
        assert_eq!(exported[0].1["roles"], "dht,proxy");
        let check = |expr: &str| -> Vec<String> {
            selectors(expr)
                .unwrap()
                .iter()
                .flat_map(|selector| unmatched(selector, &exported))
                .collect()
        };
        assert!(
            check("c_total{namespace=~\"$namespace\",result=~\"hit|miss\",result!=\"x\"}")
                .is_empty()
        );
        assert_eq!(
            check("c_total{result=~\"hit|peer\"}"),
            ["c_total{result=\"peer\"}"]
        );
        assert_eq!(
            check("c_total{result=\"stale\"}"),
            ["c_total{result=\"stale\"}"]
        );
        assert_eq!(check("c_total{result=~\"m.+\"}"), Vec::<String>::new());
        assert_eq!(check("c_total{result=~\"z.+\"}").len(), 1);
        assert_eq!(check("other_total"), ["other_total"]);
    }

    #[test]
    fn exposition_names_include_histogram_series() {
        let text =
            "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_sum 0\nh_count 0\nc_total 3\n";
        assert_eq!(
            exported_names(text),
            BTreeSet::from(["h_bucket", "h_sum", "h_count", "c_total"].map(str::to_owned))
        );
    }
}
