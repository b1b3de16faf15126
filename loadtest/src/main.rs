//! `loadtest`: load-test harness for the Phoenix Channels gateway. The coordinator parses the
//! scenario, spawns itself as `worker` processes that hold the sessions, merges their results,
//! prints a summary, writes `--json`, and exits 1 when an `--fail-if` gate is violated (2 when
//! the run itself failed).

mod cli;
mod fleet;
mod http;
mod merge;
mod metrics;
mod phoenix;
mod plan;
mod protocol;
mod publisher;
mod report;
mod scenario;
mod session;
mod slo;
mod stats;
mod target;
mod worker;
mod ws;

use clap::Parser;
use cli::{Cli, Cmd};
use report::Report;
use scenario::RunError;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Worker = cli.cmd {
        // One core per worker: the coordinator runs several, and a current-thread runtime keeps
        // the per-session cost to the task itself.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        return match rt.map(|rt| rt.block_on(worker::run())) {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(e)) => {
                eprintln!("worker: {e}");
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("worker runtime: {e}");
                ExitCode::from(2)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(coordinate(cli.cmd)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs a scenario (or merge), reports, and says whether every SLO gate passed.
async fn coordinate(cmd: Cmd) -> Result<bool, RunError> {
    let (report, json, gates): (Report, Option<PathBuf>, Vec<String>) = match cmd {
        Cmd::Capacity(a) => {
            precheck(&a.common.fail_if)?;
            (
                scenario::capacity::run(&a).await?,
                a.common.json,
                a.common.fail_if,
            )
        }
        Cmd::Fanout(a) => {
            precheck(&a.common.fail_if)?;
            (
                scenario::fanout::run(&a).await?,
                a.common.json,
                a.common.fail_if,
            )
        }
        Cmd::Churn(a) => {
            precheck(&a.common.fail_if)?;
            (
                scenario::churn::run(&a).await?,
                a.common.json,
                a.common.fail_if,
            )
        }
        Cmd::Merge(a) => (merge::merge_files(&a.reports)?, a.json, a.fail_if),
        Cmd::Worker => unreachable!("handled in main"),
    };
    finish(report, json.as_deref(), &gates)
}

/// Parses the gates before the run so a typo fails fast.
fn precheck(gates: &[String]) -> Result<(), RunError> {
    for g in gates {
        slo::parse(g)?;
    }
    Ok(())
}

/// Evaluates gates, prints the summary, writes the JSON report.
fn finish(
    mut report: Report,
    json: Option<&std::path::Path>,
    gates: &[String],
) -> Result<bool, RunError> {
    let parsed = gates
        .iter()
        .map(|g| slo::parse(g))
        .collect::<Result<Vec<_>, _>>()?;
    report.slo = slo::evaluate(&parsed, &report);
    report.passed = report.slo.iter().all(|g| !g.violated);
    println!("{}", report.summary());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(report.passed)
}
