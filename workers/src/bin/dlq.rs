//! `memberline-dlq`: list, show, replay and purge a worker's dead letters.
//!
//! ```text
//! memberline-dlq list --worker ledger [--limit 20]
//! memberline-dlq show --worker ledger --event-id <uuid>
//! memberline-dlq replay --worker ledger [--event-id <uuid>] [--limit N]
//! memberline-dlq purge --worker ledger --yes
//! ```

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use memberline_platform::Settings;
use memberline_platform::dead_letters;
use memberline_schema::topology::Worker;

#[derive(Parser)]
#[command(name = "memberline-dlq", about = "Inspect and replay dead letters")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List dead letters (they stay in the queue).
    List {
        #[arg(long)]
        worker: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Show one dead letter in full.
    Show {
        #[arg(long)]
        worker: String,
        #[arg(long)]
        event_id: String,
    },
    /// Move dead letters back to the worker's queue.
    Replay {
        #[arg(long)]
        worker: String,
        /// Only this event.
        #[arg(long)]
        event_id: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Delete every dead letter of a worker.
    Purge {
        #[arg(long)]
        worker: String,
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

fn worker(name: &str) -> anyhow::Result<Worker> {
    Worker::parse(name).with_context(|| {
        format!("worker must be membership, ledger, notifier or savings, not {name}")
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load()?;
    let url = settings.amqp.url.expose().to_owned();
    let topology = settings.topology();
    match cli.command {
        Command::List { worker: w, limit } => {
            let list = dead_letters::list(&url, &topology, worker(&w)?, limit).await?;
            if list.is_empty() {
                println!("no dead letters for {w}");
            }
            for d in list {
                println!(
                    "{}  {}  attempts={}  {}",
                    d.event_id.as_deref().unwrap_or("-"),
                    d.event_type.as_deref().unwrap_or("-"),
                    d.attempts.unwrap_or(0),
                    d.reason.as_deref().unwrap_or("-"),
                );
            }
        }
        Command::Show {
            worker: w,
            event_id,
        } => {
            let list = dead_letters::list(&url, &topology, worker(&w)?, 10_000).await?;
            let found = list
                .into_iter()
                .find(|d| d.event_id.as_deref() == Some(event_id.as_str()))
                .with_context(|| format!("no dead letter with event id {event_id}"))?;
            println!("{}", serde_json::to_string_pretty(&found)?);
        }
        Command::Replay {
            worker: w,
            event_id,
            limit,
        } => {
            // Drawn on stderr, and hidden when stderr is not a terminal.
            let bar = ProgressBar::new(0).with_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} examined ({elapsed})")
                    .expect("a valid progress template"),
            );
            let report = dead_letters::replay(
                &url,
                &topology,
                worker(&w)?,
                event_id.as_deref(),
                limit,
                |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                },
            )
            .await?;
            if bar.is_hidden() {
                // Not a terminal (a log, a pipe): the bar was never drawn; say where it ended.
                eprintln!(
                    "{}/{} examined",
                    bar.position(),
                    bar.length().unwrap_or_default()
                );
            } else {
                bar.finish();
            }
            println!(
                "replayed {} dead letter(s) of {w}; {} left",
                report.replayed, report.remaining
            );
        }
        Command::Purge { worker: w, yes } => {
            anyhow::ensure!(yes, "purging deletes dead letters for good; pass --yes");
            let n = dead_letters::purge(&url, &topology, worker(&w)?).await?;
            println!("purged {n} dead letter(s) of {w}");
        }
    }
    Ok(())
}
