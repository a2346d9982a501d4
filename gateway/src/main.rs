//! `memberline`: the gateway and its operator commands.

use anyhow::Context;
use clap::{Parser, Subcommand};
use memberline_gateway::http::auth::{Keys, Role};
use memberline_gateway::{Application, seed};
use memberline_platform::{Settings, db, shutdown, telemetry};
use memberline_schema::Migrator;
use sea_orm_migration::MigratorTrait;

#[derive(Parser)]
#[command(
    name = "memberline",
    about = "Memberline gateway and operator commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (and the embedded relay when relay.embedded = true). The default.
    Serve,
    /// Run only the outbox relay.
    Relay,
    /// Apply or roll back database migrations.
    Migrate {
        #[arg(value_enum, default_value = "up")]
        direction: Direction,
        /// Number of migrations to apply or roll back (all when absent).
        #[arg(long)]
        steps: Option<u32>,
    },
    /// Seed the demo catalogue and users (idempotent).
    Seed,
    /// Print a bearer token for a user.
    Token {
        #[arg(long)]
        user: i64,
        #[arg(long, default_value = "user")]
        role: String,
        /// Lifetime in seconds (default: auth.token_ttl_secs).
        #[arg(long)]
        ttl_secs: Option<i64>,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Print the RabbitMQ definitions (exchanges, queues, bindings) of the configured topology.
    Topology,
    /// Merchant console tools.
    Console {
        #[command(subcommand)]
        action: ConsoleAction,
    },
    /// Staff accounts (who signs in to the console).
    Staff {
        #[command(subcommand)]
        action: StaffAction,
    },
    /// The dashboard's rollups.
    Stats {
        #[command(subcommand)]
        action: StatsAction,
    },
}

#[derive(Subcommand)]
enum StatsAction {
    /// Recompute the dashboard's rollups from the orders, their refunds and the membership
    /// periods (after changing shop.time_zone, say). The workers may keep running: they wait.
    Rebuild,
}

#[derive(Subcommand)]
enum StaffAction {
    /// Add a staff account; its password is read from standard input (one line).
    Add {
        #[arg(long)]
        username: String,
        /// `merchant` (the live console, orders and members, read-only) or `admin`.
        #[arg(long)]
        role: String,
    },
    /// Disable a staff account: it signs in no more.
    Disable {
        #[arg(long)]
        username: String,
    },
}

#[derive(Subcommand)]
enum ConsoleAction {
    /// Follow the merchant stream (paid orders, reminders, refunds), resuming after drops.
    Tail {
        /// The gateway (default: http://127.0.0.1:<http.port>).
        #[arg(long)]
        url: Option<String>,
        /// A merchant or admin bearer token (or MEMBERLINE_TOKEN).
        #[arg(long, env = "MEMBERLINE_TOKEN")]
        token: String,
        /// Start after this feed number (0: everything stored); live from now when absent.
        #[arg(long)]
        after: Option<i64>,
        /// Print each entry as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Direction {
    Up,
    Down,
    Status,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load()?;
    telemetry::init(&settings.log);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let application = Application::build(settings).await?;
            application.run_until(shutdown::on_signals()).await
        }
        Command::Relay => {
            memberline_platform::outbox::relay::run_standalone(settings, shutdown::on_signals())
                .await
        }
        Command::Migrate { direction, steps } => {
            let db = db::connect(&settings.database).await?;
            match direction {
                Direction::Up => Migrator::up(&db, steps).await?,
                Direction::Down => Migrator::down(&db, steps).await?,
                Direction::Status => Migrator::status(&db).await?,
            }
            Ok(())
        }
        Command::Seed => {
            let db = db::connect(&settings.database).await?;
            seed::demo(&db).await.context("seeding failed")?;
            tracing::info!("Demo catalogue and users are in place");
            Ok(())
        }
        Command::Token {
            user,
            role,
            ttl_secs,
        } => {
            let role = Role::parse(&role)
                .with_context(|| format!("role must be user, merchant or admin, not {role}"))?;
            let keys = Keys::new(settings.auth.signing_secret()?);
            println!(
                "{}",
                keys.issue(user, role, ttl_secs.unwrap_or(settings.auth.token_ttl_secs))
            );
            Ok(())
        }
        Command::Staff { action } => {
            let db = db::connect(&settings.database).await?;
            match action {
                StaffAction::Add { username, role } => {
                    let role = Role::parse(&role)
                        .filter(|r| *r != Role::User)
                        .with_context(|| format!("role must be merchant or admin, not {role}"))?;
                    let mut password = String::new();
                    std::io::stdin()
                        .read_line(&mut password)
                        .context("reading the password from standard input")?;
                    let password = password.trim_end_matches(['\r', '\n']);
                    let id = memberline_gateway::staff::add(&db, &username, password, role).await?;
                    println!("staff {id}: {username} ({role:?})");
                }
                StaffAction::Disable { username } => {
                    if !memberline_gateway::staff::disable(&db, &username).await? {
                        anyhow::bail!("no staff account named {username}");
                    }
                    println!("{username} is disabled");
                }
            }
            Ok(())
        }
        Command::Stats {
            action: StatsAction::Rebuild,
        } => {
            let db = db::connect(&settings.database).await?;
            let rebuilt = memberline_orders::stats::rebuild(&db, settings.shop.time_zone).await?;
            println!(
                "rebuilt in {}: {} paid orders, {} refunds, {} members",
                settings.shop.time_zone, rebuilt.paid_orders, rebuilt.refunds, rebuilt.members
            );
            Ok(())
        }
        Command::Openapi => {
            use utoipa::OpenApi;
            let doc = memberline_gateway::http::docs::ApiDoc::openapi();
            println!("{}", doc.to_pretty_json()?);
            Ok(())
        }
        Command::Console {
            action:
                ConsoleAction::Tail {
                    url,
                    token,
                    after,
                    json,
                },
        } => {
            let base = url.unwrap_or_else(|| format!("http://127.0.0.1:{}", settings.http.port));
            let tail = memberline_gateway::console_tail::Tail {
                base,
                token,
                after,
                json,
            };
            memberline_gateway::console_tail::run(tail, shutdown::on_signals()).await
        }
        Command::Topology => {
            println!(
                "{}",
                serde_json::to_string_pretty(&settings.topology().definitions())?
            );
            Ok(())
        }
    }
}
