//! `phoenix pipeline …`: templates, rendering, validation, deployments.

use phoenix_client::Client;
use serde_json::{Map, Value};

use crate::cli::{GlobalArgs, ParamArgs, PipelineCmd};
use crate::commands::read_spec;
use crate::error::{CliError, CliResult};
use crate::output::{emit, fields, print_out, Format, Table};

/// The parameters given by file and flags (flags win).
fn parameters(p: &ParamArgs) -> CliResult<Value> {
    let mut map = match &p.params_file {
        Some(file) => match read_spec(file)? {
            Value::Object(m) => m,
            _ => {
                return Err(CliError::usage(format!(
                    "{}: expected a mapping of parameters",
                    file.display()
                )))
            }
        },
        None => Map::new(),
    };
    for pair in &p.params {
        let (name, value) = pair
            .split_once('=')
            .filter(|(n, _)| !n.trim().is_empty())
            .ok_or_else(|| CliError::usage(format!("--param `{pair}`: expected NAME=VALUE")))?;
        let value: Value = serde_yaml::from_str(value)
            .map_err(|e| CliError::usage(format!("--param `{pair}`: {e}")))?;
        map.insert(name.trim().to_string(), value);
    }
    Ok(Value::Object(map))
}

fn selector(pairs: &[String]) -> CliResult<Value> {
    let mut sel = Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--selector `{pair}`: expected KEY=VALUE")))?;
        sel.insert(k.trim().to_string(), Value::String(v.trim().to_string()));
    }
    Ok(Value::Object(sel))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub async fn run(cmd: PipelineCmd, g: &GlobalArgs, c: &Client) -> CliResult<u8> {
    match cmd {
        PipelineCmd::Templates => {
            let list = c.templates().await?;
            emit(g.output, &list, || {
                let mut t =
                    Table::new(&["NAME", "VERSION", "BUILTIN", "PARAMETERS", "DESCRIPTION"]);
                for tpl in list.as_array().into_iter().flatten() {
                    let params: Vec<String> = tpl["parameters"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| s(&p["name"]))
                        .collect();
                    t.row(vec![
                        s(&tpl["name"]),
                        s(&tpl["version"]),
                        s(&tpl["builtin"]),
                        params.join(","),
                        s(&tpl["description"]),
                    ]);
                }
                t.render()
            })?;
        }
        PipelineCmd::Template {
            name,
            template_version,
        } => {
            let t = c.template(&name, template_version).await?;
            emit(g.output, &t, || {
                let tpl = &t["template"];
                let mut out = fields(&[
                    ("Name", s(&tpl["name"])),
                    ("Version", s(&tpl["version"])),
                    ("Versions", s(&t["versions"])),
                    ("Built-in", s(&t["builtin"])),
                    ("Description", s(&tpl["description"])),
                ]);
                let mut table =
                    Table::new(&["PARAMETER", "TYPE", "DEFAULT", "MIN", "MAX", "DESCRIPTION"]);
                for p in tpl["parameters"].as_array().into_iter().flatten() {
                    table.row(vec![
                        s(&p["name"]),
                        s(&p["type"]),
                        s(&p["default"]),
                        s(&p["min"]),
                        s(&p["max"]),
                        s(&p["description"]),
                    ]);
                }
                out.push('\n');
                out.push_str(&table.render());
                out.push_str("\nSource:\n");
                out.push_str(&s(&tpl["source"]));
                out
            })?;
        }
        PipelineCmd::Render {
            template,
            params,
            format,
        } => {
            let body = serde_json::json!({
                "template": template, "parameters": parameters(&params)?, "format": format,
            });
            let r = c.render(&body).await?;
            match g.output {
                // The YAML itself is what one wants to pipe into a file.
                Format::Table => {
                    let mut yaml = s(&r["yaml"]);
                    if !yaml.ends_with('\n') {
                        yaml.push('\n');
                    }
                    print_out(&yaml);
                }
                other => emit(other, &r, String::new)?,
            }
        }
        PipelineCmd::Validate {
            pipeline,
            file,
            params,
        } => {
            let pipeline = match (pipeline, file) {
                (Some(p), None) => p,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .map_err(|e| CliError::usage(format!("cannot read {}: {e}", f.display())))?,
                _ => {
                    return Err(CliError::usage(
                        "give a template name or a pipeline file with -f",
                    ))
                }
            };
            let body =
                serde_json::json!({ "pipeline": pipeline, "parameters": parameters(&params)? });
            let r = c.validate(&body).await?;
            emit(g.output, &r, || {
                format!(
                    "valid: processors {}\n",
                    r["processors"]
                        .as_array()
                        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(" → "))
                        .filter(|p| !p.is_empty())
                        .unwrap_or_else(|| "(none)".into())
                )
            })?;
        }
        PipelineCmd::Deploy {
            pipeline,
            name,
            hosts,
            selector: sel,
            params,
        } => {
            let body = serde_json::json!({
                "name": name.unwrap_or_else(|| format!("{pipeline} from the CLI")),
                "pipeline": pipeline,
                "parameters": parameters(&params)?,
                "target_hosts": hosts,
                "target_selector": selector(&sel)?,
            });
            let d = c.deploy(&body).await?;
            emit(g.output, &d, || deployment_view(&d))?;
        }
        PipelineCmd::Deployments => {
            let page = c.deployments().await?;
            emit(g.output, &page, || {
                let mut t = Table::new(&["ID", "NAME", "PIPELINE", "STATUS", "HOSTS", "CREATED"]);
                for d in page["items"].as_array().into_iter().flatten() {
                    t.row(vec![
                        s(&d["id"]),
                        s(&d["name"]),
                        s(&d["pipeline"]).lines().next().unwrap_or("").to_string(),
                        s(&d["status"]),
                        d["target_hosts"]
                            .as_array()
                            .map(|a| a.len())
                            .unwrap_or(0)
                            .to_string(),
                        s(&d["created_at"]),
                    ]);
                }
                t.render()
            })?;
        }
        PipelineCmd::Deployment { id } => {
            let d = c.deployment(&id).await?;
            emit(g.output, &d, || deployment_view(&d))?;
        }
        PipelineCmd::Withdraw { id } => {
            let d = c.withdraw(&id).await?;
            emit(g.output, &d, || deployment_view(&d))?;
        }
    }
    Ok(0)
}

fn deployment_view(d: &Value) -> String {
    let mut out = fields(&[
        ("ID", s(&d["id"])),
        ("Name", s(&d["name"])),
        ("Pipeline", s(&d["pipeline"])),
        ("Status", s(&d["status"])),
        ("By status", s(&d["by_status"])),
    ]);
    let mut t = Table::new(&["HOST", "TASK", "STATUS", "ERROR"]);
    for h in d["hosts"].as_array().into_iter().flatten() {
        t.row(vec![
            s(&h["host_id"]),
            s(&h["task_id"]),
            s(&h["status"]),
            s(&h["error"]),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render());
    out
}
