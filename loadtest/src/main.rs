//! `loadtest`: load-test harness for the Phoenix Channels gateway. The coordinator parses the
//! scenario, spawns itself as `worker` processes that hold the sessions, merges their results,
//! prints a summary, writes `--json`, and exits 1 when an `--fail-if` gate is violated (2 when
//! the run itself failed).

mod cli;
mod echo_floor;
mod fleet;
mod floor;
mod http;
mod merge;
mod metrics;
mod phoenix;
mod plan;
mod plot;
mod protocol;
mod publisher;
mod rejoin;
mod replay;
mod report;
mod round_floor;
mod scenario;
mod session;
mod slo;
mod stats;
mod summary;
mod target;
mod tasks;
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
    // The floor is plain threads and blocking sockets: no coordinator runtime under it.
    match &cli.cmd {
        Cmd::Floor(a) => return floor_main(a),
        Cmd::FloorReader(a) => {
            let served = match (a.echo, a.round_bytes) {
                (true, _) => echo_floor::server(a.connect, a.sockets, a.sources),
                (false, Some(b)) => round_floor::reader(a.connect, a.sockets, a.sources, b),
                (false, None) => floor::reader(a.connect, a.sockets, a.sources),
            };
            return match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("floor-reader: {e}");
                    ExitCode::from(2)
                }
            };
        }
        _ => {}
    }
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
    let (report, out) = match cmd {
        Cmd::Capacity(a) => {
            precheck(&a.common.fail_if)?;
            (scenario::capacity::run(&a).await?, Outputs::of(&a.common))
        }
        Cmd::Fanout(a) => {
            precheck(&a.common.fail_if)?;
            (scenario::fanout::run(&a).await?, Outputs::of(&a.common))
        }
        Cmd::Churn(a) => {
            precheck(&a.common.fail_if)?;
            (scenario::churn::run(&a).await?, Outputs::of(&a.common))
        }
        Cmd::Failover(a) => {
            precheck(&a.common.fail_if)?;
            (scenario::failover::run(&a).await?, Outputs::of(&a.common))
        }
        Cmd::Recovery(a) => {
            precheck(&a.common.fail_if)?;
            (scenario::recovery::run(&a).await?, Outputs::of(&a.common))
        }
        Cmd::Merge(a) => {
            precheck(&a.fail_if)?;
            let out = Outputs {
                json: a.json,
                svg: a.svg,
                gates: a.fail_if,
            };
            (merge::merge_files(&a.reports)?, out)
        }
        Cmd::Worker | Cmd::Floor(_) | Cmd::FloorReader(_) => unreachable!("handled in main"),
    };
    finish(report, &out)
}

/// `loadtest floor`: measures, prints one line, writes `--json`.
fn floor_main(a: &cli::FloorArgs) -> ExitCode {
    let run = || -> Result<String, floor::FloorError> {
        let (line, json) = if a.echo {
            let f = echo_floor::measure(a.sockets, a.secs, a.sources)?;
            (f.line(), serde_json::to_vec_pretty(&f)?)
        } else if let Some(rounds) = a.rounds {
            let gap = std::time::Duration::from_millis(a.gap_ms);
            let f = round_floor::measure(a.sockets, rounds, a.bytes, a.sources, gap)?;
            (f.line(), serde_json::to_vec_pretty(&f)?)
        } else {
            let f = floor::measure(a.sockets, a.secs, a.bytes, a.sources)?;
            (f.line(), serde_json::to_vec_pretty(&f)?)
        };
        if let Some(path) = &a.json {
            std::fs::write(path, json)?;
        }
        Ok(line)
    };
    match run() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadtest floor: {e}");
            ExitCode::from(2)
        }
    }
}

/// Where results go and which gates apply.
struct Outputs {
    /// `--json`.
    json: Option<PathBuf>,
    /// `--svg`.
    svg: Option<PathBuf>,
    /// `--fail-if`.
    gates: Vec<String>,
}

impl Outputs {
    /// From the shared scenario flags.
    fn of(c: &cli::Common) -> Outputs {
        Outputs {
            json: c.json.clone(),
            svg: c.svg.clone(),
            gates: c.fail_if.clone(),
        }
    }
}

/// Parses the gates before the run so a typo fails fast.
fn precheck(gates: &[String]) -> Result<(), RunError> {
    for g in gates {
        slo::parse(g)?;
    }
    Ok(())
}

/// Evaluates gates, prints the summary, writes the JSON report and the plot.
fn finish(mut report: Report, out: &Outputs) -> Result<bool, RunError> {
    let parsed = out
        .gates
        .iter()
        .map(|g| slo::parse(g))
        .collect::<Result<Vec<_>, _>>()?;
    report.slo = slo::evaluate(&parsed, &report);
    report.passed = report.slo.iter().all(|g| !g.violated);
    println!("{}", report.summary());
    if let Some(path) = &out.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    if let Some(path) = &out.svg {
        std::fs::write(path, plot::svg(&report)?)?;
    }
    Ok(report.passed)
}
