//! The command line: one file per verb, the arguments they share
//! ([`args`]), what each does before and after its own work ([`session`]:
//! loading the config, connecting, exit statuses), how they print
//! ([`output`]), and logging setup.

mod args;
mod check;
mod dlq;
mod events;
mod init;
mod invoke;
mod output;
mod projection;
mod publish;
mod replay;
mod saga;
mod schedule;
mod session;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use args::ConfigArg;

#[derive(Parser)]
#[command(
    name = "jetrun",
    version,
    about = "Serverless function runner on NATS JetStream"
)]
pub(crate) struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub(crate) log_format: LogFormat,
    #[command(flatten)]
    connection: args::ConnectArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Reload the config when the file changes (SIGHUP always reloads it).
    #[arg(long)]
    watch: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the functions in the config file.
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Run them against a nats-server jetrun starts and stops itself (data under .jetrun/).
    #[command(after_help = DEV_EXAMPLES)]
    Dev(RunArgs),
    /// Validate the config file: exit 0 when it is good, 2 when it is not.
    #[command(after_help = CHECK_EXAMPLES)]
    Check(check::CheckArgs),
    /// Publish one event (CloudEvents binary mode), now or later (--delay,
    /// --at), and print its stream and sequence.
    #[command(after_help = PUBLISH_EXAMPLES)]
    Publish(publish::PublishArgs),
    /// Write a commented starter config (user.registered -> welcome_email).
    #[command(after_help = INIT_EXAMPLES)]
    Init(init::InitArgs),
    /// Inspect a function's dead letters and send them back to their original subject.
    #[command(after_help = dlq::EXAMPLES)]
    Dlq(dlq::DlqArgs),
    /// Per function: consumer, pending, ack pending, redelivered, dead letters, last activity.
    #[command(after_help = status::EXAMPLES)]
    Status(status::StatusArgs),
    /// Rebuild a projection's read model from its stream into a new bucket.
    #[command(after_help = projection::EXAMPLES)]
    Projection(projection::ProjectionArgs),
    /// Run a function over a range of its stream's history again, in this process.
    #[command(after_help = replay::EXAMPLES)]
    Replay(replay::ReplayArgs),
    /// Print the events stored on a subject (wildcards allowed), oldest first.
    #[command(after_help = events::EXAMPLES)]
    Events(events::EventsArgs),
    /// A saga's instances: list them, or show one's timeline, state and data.
    #[command(after_help = saga::EXAMPLES)]
    Saga(saga::SagaArgs),
    /// Scheduled functions: list them with their next fire time, or fire one
    /// now; delayed events: list them, or cancel one.
    #[command(after_help = schedule::EXAMPLES)]
    Schedule(schedule::ScheduleArgs),
    /// Run one function of the config once on a payload, without NATS; print
    /// its result, its emits and how it ended.
    #[command(after_help = invoke::EXAMPLES)]
    Invoke(invoke::InvokeArgs),
    /// Print a shell completion script.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  jetrun completions bash > ~/.local/share/bash-completion/completions/jetrun
  jetrun completions zsh > \"${fpath[1]}/_jetrun\"
  jetrun completions fish > ~/.config/fish/completions/jetrun.fish";

const RUN_EXAMPLES: &str = "\
Examples:
  jetrun run -c /etc/jetrun/jetrun.toml
  JETRUN_NATS_URL=nats://127.0.0.1:4222,nats://127.0.0.1:4223 jetrun run
  jetrun run --watch                 # also reload when the file changes
  kill -HUP \"$(pidof jetrun)\"        # reload a running jetrun's config";

const DEV_EXAMPLES: &str = "\
Examples:
  jetrun dev                         # the quick start, config/jetrun.toml
  jetrun dev -c jetrun.toml --watch
  JETRUN_LOG=info,jetrun::dispatch=debug jetrun dev   # log every handled event";

const CHECK_EXAMPLES: &str = "\
Examples:
  jetrun check                       # ./jetrun.toml
  jetrun check /etc/jetrun/jetrun.toml
  jetrun check -c /etc/jetrun/jetrun.toml && systemctl reload jetrun";

const PUBLISH_EXAMPLES: &str = "\
Examples:
  jetrun publish user.registered '{\"user_id\": 1, \"email\": \"ada@shop.test\"}'
  jetrun publish --correlation-id checkout-1001 order.placed \\
    '{\"order_id\": 1001, \"items\": [{\"sku\": \"book\", \"qty\": 2}]}'
  echo '{\"order_id\": 2, \"items\": []}' | jetrun publish order.placed -
  jetrun publish --server nats://127.0.0.1:4223 --header tenant=acme \\
    user.registered '{\"user_id\": 2, \"email\": \"bo@shop.test\"}'
  jetrun publish -c config/jetrun.toml order.placed '{\"order_id\": 3}'   # [nats] URLs, credentials, TLS
  jetrun publish --delay 30m --id remind-1001 order.reminder '{\"order_id\": 1001}'
  jetrun publish --at 2026-12-24T18:00:00+01:00 email.greeting '{\"to\": \"ada@shop.test\"}'
  jetrun schedule list --delayed     # what is held
  jetrun schedule cancel remind-1001 # not stored after all";

const INIT_EXAMPLES: &str = "\
Examples:
  jetrun init                        # writes ./jetrun.toml
  jetrun init /etc/jetrun/jetrun.toml --force";

impl Cli {
    /// Whether the verb starts logging itself, after reading `[telemetry]`.
    pub(crate) fn reads_telemetry(&self) -> bool {
        matches!(self.command, Command::Run(_) | Command::Dev(_))
    }
}

pub(crate) async fn execute(cli: Cli) -> ExitCode {
    let connection = cli.connection.given(&crate::nats::settings::Process);
    session::connect_with(connection.clone());
    let result = match cli.command {
        Command::Check(arg) => return check::check(&arg),
        Command::Run(arg) => match session::load_logged(&arg.config.path(), cli.log_format) {
            Ok(loaded) => crate::runtime::run(loaded, reload_source(&arg, connection)).await,
            Err(code) => return code,
        },
        Command::Dev(arg) => match session::load_logged(&arg.config.path(), cli.log_format) {
            Ok(loaded) => crate::runtime::dev(loaded, reload_source(&arg, connection)).await,
            Err(code) => return code,
        },
        Command::Publish(args) => {
            let config = match &args.config {
                Some(path) => match session::load(path) {
                    Ok(loaded) => Some(loaded.config),
                    Err(code) => return code,
                },
                None => None,
            };
            publish::publish(args, config).await
        }
        Command::Init(args) => init::init(&args),
        Command::Dlq(args) => return dlq::dlq(args).await,
        Command::Status(args) => return status::status(args).await,
        Command::Projection(args) => return projection::projection(args).await,
        Command::Replay(args) => return replay::replay(args).await,
        Command::Events(args) => return events::events(args).await,
        Command::Saga(args) => return saga::saga(args).await,
        Command::Schedule(args) => return schedule::schedule(args).await,
        Command::Invoke(args) => return invoke::invoke(args).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            // Into a buffer first: clap_complete panics when its writer
            // fails (a closed pipe), and writing it ourselves does not.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "jetrun", &mut script);
            match std::io::stdout().write_all(&script) {
                Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(anyhow::Error::new(err).context("cannot write the completion script"))
                }
                _ => Ok(()),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("jetrun: {}", crate::redact::text(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}

fn reload_source(
    arg: &RunArgs,
    connection: crate::nats::settings::Given,
) -> crate::runtime::Source {
    crate::runtime::Source {
        path: arg.config.path(),
        watch: arg.watch,
        connection,
    }
}
