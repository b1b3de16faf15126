//! The `gateway` binary: parse flags, set up logging, bind, run until SIGINT/SIGTERM, drain.

use std::net::SocketAddr;

use clap::Parser;
use gateway::cli::Cli;
use gateway::config::LogFormat;
use tracing_subscriber::EnvFilter;

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Raise the soft open-files limit to the hard limit (each session is a file descriptor) and
/// return the limit in force, if it could be read.
#[allow(unsafe_code)]
fn raise_nofile() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// Descriptors kept free of sessions when the session cap comes from the open-files limit:
/// the listener, broker connections, API and metrics requests, and the 503 answers themselves.
const FD_RESERVE: u64 = 256;

/// Accept backlog: std/mio use 128, which overflows during connect storms (dropped SYNs are
/// retried only after 1 s); the kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("shutdown signal received");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let nofile = raise_nofile();
    let addr = SocketAddr::new(cli.bind, cli.port);
    let cap_given = cli.max_sessions.is_some();
    let mut config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            return std::process::ExitCode::from(2);
        }
    };
    if !cap_given {
        // A full fd table would leave clients hanging in the accept backlog; a cap answers 503.
        config.max_sessions = nofile.map_or(0, |n| n.saturating_sub(FD_RESERVE).max(1) as usize);
        tracing::info!(
            max_sessions = config.max_sessions,
            open_files = ?nofile,
            "session cap from the open-files limit"
        );
    }
    let listener = match listen(addr) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, %addr, "cannot bind");
            return std::process::ExitCode::from(1);
        }
    };
    match gateway::run(listener, config, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway failed");
            std::process::ExitCode::FAILURE
        }
    }
}
