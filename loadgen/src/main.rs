//! `switchboard-sim`: the simulator and the benchmarks, kept out of the production binary.
//! `simulate` drives a support day (or a capacity search) through the real front doors of a
//! `switchboard` started beside it; `bench` measures one part at a time. Both drive the system
//! only through its doors and its services, as customers, providers and agents would.

mod bench;
mod bench_api;
mod bench_chat;
mod bench_dashboard;
mod bench_flood;
mod bench_orders;
mod bench_processors;
mod bench_retention;
mod bench_rules;
mod bench_workspace;
mod shop;
mod sim_forecast;
mod simulate;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use switchboard_cli::{init_tracing, load};

#[derive(Debug, Parser)]
#[command(
    name = "switchboard-sim",
    version,
    about = "Switchboard's simulator and benchmarks: a support day through the front doors, capacity search, per-part benchmarks"
)]
struct Cli {
    #[command(flatten)]
    global: switchboard_cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// A support day through the real front doors (and `--find-max`: this machine's capacity).
    Simulate(simulate::SimulateArgs),
    /// The demand forecast checked on simulated weeks: MAPE per hour and day of the last week
    /// forecast from the others (ClickHouse), and the staffing plan against the shipped shifts.
    Forecast(sim_forecast::ForecastArgs),
    /// A stand-in shop Admin API (Shopify's shapes) for tests and demos: orders, cancel, refund,
    /// address change, idempotency keys, injected failures.
    Shop(shop::ShopArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Accepted messages/s and ack latency of every channel's front door, beside the raw produce rate.
    Ingest(bench::IngestArgs),
    /// Texts/s and latency of the predict path (batch 1, micro-batched) beside raw ONNX Runtime and Python.
    Models(bench::ModelsArgs),
    /// Routing decisions/s and latency with 10K agents and 100K queued tickets (Postgres).
    Routing(bench_processors::RoutingArgs),
    /// Postgres bytes per open SLA clock and the poller's rate among 1M clocks.
    Sla(bench_processors::SlaArgs),
    /// Inbound-to-assignment latency with the whole pipeline running at a steady rate.
    Pipeline(bench_processors::PipelineArgs),
    /// Customer WebSockets held by a running server, ack and reply delivery latency under load.
    Chat(bench_chat::ChatArgs),
    /// The supervisor dashboard's ClickHouse queries over millions of events (p50/p95).
    Dashboard(bench_dashboard::DashboardArgs),
    /// The agent API's p50/p99 under a steady mixed load of reads and writes (running server).
    Api(bench_api::ApiArgs),
    /// Legitimate throughput under a 10x hostile flood, as a ratio to none (running server).
    Flood(bench_flood::FloodArgs),
    /// Tickets/s and rows/s of one retention pass over days of 1M tickets a day (Postgres).
    Retention(bench_retention::RetentionArgs),
    /// View counts, view pages, search and a bulk change over a large desk, beside unindexed (Postgres).
    Workspace(bench_workspace::WorkspaceArgs),
    /// The rules stage's cost per event with 0, 100 and 1,000 rules beside the ticketing stage's, and a 7-day dry run (Postgres, broker, ClickHouse).
    Rules(bench_rules::RulesArgs),
    /// Order actions (refund, cancel) through a running Switchboard against the stand-in shop, beside the shop's own latency.
    Orders(bench_orders::OrdersArgs),
}

/// The production binary the simulator and the pipeline benchmark start their roles with:
/// `SWITCHBOARD_BIN`, else `switchboard` beside this binary, else `switchboard` on `PATH`.
pub(crate) fn switchboard_exe() -> PathBuf {
    if let Some(p) = std::env::var_os("SWITCHBOARD_BIN") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("switchboard")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("switchboard"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.log_json);
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let config = &cli.global.config;
    match cli.command {
        Command::Simulate(args) => simulate::simulate(config, load(config)?, args).await,
        Command::Forecast(args) => {
            sim_forecast::forecast(&load(config)?, args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Shop(args) => {
            shop::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(bench) => {
            match bench {
                BenchCommand::Ingest(args) => bench::ingest(load(config)?, args).await?,
                BenchCommand::Models(args) => bench::models(&load(config)?, args).await?,
                BenchCommand::Routing(args) => {
                    bench_processors::routing(&load(config)?, args).await?
                }
                BenchCommand::Sla(args) => bench_processors::sla(&load(config)?, args).await?,
                BenchCommand::Pipeline(args) => {
                    bench_processors::pipeline(&load(config)?, config, args).await?
                }
                BenchCommand::Chat(args) => bench_chat::chat(args).await?,
                BenchCommand::Dashboard(args) => {
                    bench_dashboard::dashboard(&load(config)?, args).await?
                }
                BenchCommand::Api(args) => bench_api::api(args).await?,
                BenchCommand::Flood(args) => bench_flood::flood(args).await?,
                BenchCommand::Retention(args) => {
                    bench_retention::retention(&load(config)?, args).await?
                }
                BenchCommand::Workspace(args) => {
                    bench_workspace::workspace(&load(config)?, args).await?
                }
                BenchCommand::Rules(args) => bench_rules::rules(&load(config)?, args).await?,
                BenchCommand::Orders(args) => bench_orders::orders(args).await?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
