//! `jobq`: submit, read and watch jobq extraction jobs from the command line.

mod output;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use jobq_client::{
    DEFAULT_CONNECT_TIMEOUT, Error, JobQueueClient, JobStatus, ListJobs, SubmitJob, WatchJobs,
    sha256_hex,
};
use serde_json::json;
use tonic::Code;
use uuid::Uuid;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  other error
  2  usage error (bad arguments, or a server URL that is not http(s)://host:port)
  3  not found (the job does not exist, or belongs to another user)
  4  refused by a limit (monthly quota or hourly rate)
  5  refused request (invalid argument, invalid status, max retries)
  6  server unavailable, cannot connect, or no answer in time
  7  unauthenticated or permission denied

Errors are printed as one line on stderr: `jobq: <error>`.";

#[derive(Debug, Parser)]
#[command(
    name = "jobq",
    version,
    about = "Submit, read and watch jobq menu-extraction jobs",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
struct Global {
    /// The jobq server (http:// or https://)
    #[arg(
        long,
        env = "JOBQ_URL",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL",
        global = true
    )]
    url: String,
    /// API key, sent as `authorization: Bearer KEY`
    #[arg(
        long,
        env = "JOBQ_API_KEY",
        hide_env_values = true,
        value_name = "KEY",
        global = true
    )]
    api_key: Option<String>,
    /// CA certificate (PEM) to trust for an https:// URL, besides the system's roots
    #[arg(long, value_name = "PATH", global = true)]
    ca_cert: Option<PathBuf>,
    /// Print JSON (one object per line for watch) instead of text
    #[arg(long, global = true)]
    json: bool,
    /// Deadline of each call and of connecting, e.g. 30s, 500ms, 2m [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, global = true)]
    timeout: Option<Duration>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit a menu photo (or get back the live job that already matches it)
    Submit(SubmitArgs),
    /// Show one job
    Get(JobRef),
    /// List a user's jobs, newest first
    List(ListArgs),
    /// Print job events as they happen, until Ctrl-C
    Watch(WatchArgs),
    /// Retry a failed job: prints the new job
    Retry(JobRef),
    /// Cancel a queued or processing job
    Cancel(JobRef),
    /// Show a user's plan, usage, and whether a new job would be accepted now
    Quota(UserArg),
    /// Read or change a user's plan
    #[command(subcommand)]
    Plan(PlanCommand),
}

#[derive(Debug, Args)]
struct UserArg {
    /// The user (UUID)
    #[arg(long, value_name = "USER_ID")]
    user: Uuid,
}

#[derive(Debug, Args)]
struct JobRef {
    /// The job (UUID)
    #[arg(value_name = "JOB_ID")]
    job_id: Uuid,
    /// Its owner (UUID)
    #[arg(long, value_name = "USER_ID")]
    user: Uuid,
}

#[derive(Debug, Args)]
struct SubmitArgs {
    /// The user (UUID)
    #[arg(long, value_name = "USER_ID")]
    user: Uuid,
    #[command(flatten)]
    photo: Photo,
    /// Where the workers fetch the photo
    #[arg(long, value_name = "URL")]
    image_url: String,
    /// Create a new job even when a matching one exists
    #[arg(long)]
    force: bool,
    /// Output schema [server default: stage1]
    #[arg(long, value_name = "S")]
    schema_version: Option<String>,
    /// Prompt revision [server default: v1.0]
    #[arg(long, value_name = "P")]
    prompt_version: Option<String>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Photo {
    /// The photo: its SHA-256 is computed here (the file is not uploaded)
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// The photo's SHA-256, 64 hex characters
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// The user (UUID)
    #[arg(long, value_name = "USER_ID")]
    user: Uuid,
    /// Only jobs in this status
    #[arg(long, value_enum)]
    status: Option<Status>,
    /// Jobs per page, 1 to 100 [server default: 20]
    #[arg(long, value_name = "N")]
    page_size: Option<u32>,
    /// Continue a listing from the token a previous page printed
    #[arg(long, value_name = "TOKEN", conflicts_with = "all")]
    page_token: Option<String>,
    /// Follow the pages to the end
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args)]
struct WatchArgs {
    /// Only this user's jobs [default: every user's, for service and admin keys]
    #[arg(long, value_name = "USER_ID")]
    user: Option<Uuid>,
    /// Only this job (repeat for several)
    #[arg(long = "job", value_name = "ID")]
    jobs: Vec<Uuid>,
    /// Exit after N events
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum PlanCommand {
    /// Put a user on a plan (free, premium, enterprise, or one the server configures)
    Set {
        /// The user (UUID)
        #[arg(long, value_name = "USER_ID")]
        user: Uuid,
        /// The plan's name
        plan: String,
    },
    /// Show the plan in force for a user
    Get(UserArg),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Status {
    Queued,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl From<Status> for JobStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Queued => JobStatus::Queued,
            Status::Processing => JobStatus::Processing,
            Status::Completed => JobStatus::Completed,
            Status::Failed => JobStatus::Failed,
            Status::Cancelled => JobStatus::Cancelled,
        }
    }
}

/// `30s`, `500ms`, `2m`, `1h`, `1.5s`; a bare number is seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("`{text}` is not a duration like 30s, 500ms or 2m");
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(invalid()),
    };
    match Duration::try_from_secs_f64(seconds) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(format!("`{text}` must be a positive duration")),
    }
}

/// Why a command failed.
#[derive(Debug)]
enum Failure {
    /// The call failed or the server refused it.
    Client(Error),
    /// Something local went wrong (a file, the Ctrl-C handler).
    Local { what: String, source: io::Error },
    /// Writing to stdout failed.
    Output(io::Error),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self::Client(error)
    }
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Client(error) => exit_code(error),
            Self::Local { .. } | Self::Output(_) => 1,
        }
    }

    /// The error in one line.
    fn message(&self) -> String {
        let text = match self {
            Self::Client(error) => client_message(error),
            Self::Local { what, source } => format!("{what}: {source}"),
            Self::Output(error) => format!("cannot write the output: {error}"),
        };
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

fn exit_code(error: &Error) -> u8 {
    match error {
        Error::InvalidUrl(_) => 2,
        Error::JobNotFound => 3,
        Error::QuotaExceeded { .. } | Error::RateLimited { .. } => 4,
        Error::InvalidArgument { .. }
        | Error::InvalidStatus { .. }
        | Error::MaxRetriesExceeded { .. } => 5,
        Error::Unavailable { .. } | Error::Connect(_) => 6,
        Error::Unauthenticated { .. } | Error::PermissionDenied { .. } => 7,
        Error::Status(status) => match status.code() {
            Code::NotFound => 3,
            Code::ResourceExhausted => 4,
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::AlreadyExists => 5,
            Code::Unavailable | Code::DeadlineExceeded => 6,
            Code::Unauthenticated | Code::PermissionDenied => 7,
            _ => 1,
        },
        _ => 1,
    }
}

/// The error's display, with the bad fields of an invalid argument and the
/// causes of a failed connection when the display does not already say them.
fn client_message(error: &Error) -> String {
    let mut text = error.to_string();
    if let Error::InvalidArgument { violations, .. } = error {
        let unsaid: Vec<String> = violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .filter(|violation| !text.contains(violation.as_str()))
            .collect();
        if !unsaid.is_empty() {
            text = format!("{text} ({})", unsaid.join("; "));
        }
    }
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        let said = error.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = error.source();
    }
    text
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`jobq watch | head -1`): nothing left to say.
        Err(Failure::Output(error)) if error.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(failure) => {
            // Nowhere left to report a failure to write to stderr.
            let _ = writeln!(io::stderr(), "jobq: {}", failure.message());
            ExitCode::from(failure.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let Cli { global, command } = cli;
    let client = connect(&global).await?;
    let json = global.json;
    match command {
        Command::Submit(args) => submit(&client, args, json).await,
        Command::Get(JobRef { job_id, user }) => {
            emit_job(&client.get_job(user, job_id).await?, json)
        }
        Command::List(args) => list(&client, args, json).await,
        Command::Watch(args) => watch(&client, args, json).await,
        Command::Retry(JobRef { job_id, user }) => {
            emit_job(&client.retry_job(user, job_id).await?, json)
        }
        Command::Cancel(JobRef { job_id, user }) => {
            emit_job(&client.cancel_job(user, job_id).await?, json)
        }
        Command::Quota(UserArg { user }) => {
            let quota = client.check_quota(user).await?;
            emit(&if json {
                output::document(&output::quota_json(&quota))
            } else {
                output::quota_text(&quota)
            })
        }
        Command::Plan(PlanCommand::Set { user, plan }) => {
            let plan = client.admin().set_user_plan(user, plan).await?;
            emit_plan(user, &plan, json)
        }
        Command::Plan(PlanCommand::Get(UserArg { user })) => {
            let plan = client.admin().get_user_plan(user).await?;
            emit_plan(user, &plan, json)
        }
    }
}

async fn connect(global: &Global) -> Result<JobQueueClient, Failure> {
    let mut builder = JobQueueClient::builder(global.url.as_str());
    if let Some(key) = &global.api_key {
        builder = builder.api_key(key.as_str());
    }
    if let Some(path) = &global.ca_cert {
        builder = builder.ca_certificate(read(path)?);
    }
    if let Some(timeout) = global.timeout {
        builder = builder
            .timeout(timeout)
            .connect_timeout(timeout.min(DEFAULT_CONNECT_TIMEOUT));
    }
    Ok(builder.build().await?)
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|source| Failure::Local {
        what: format!("cannot read {}", path.display()),
        source,
    })
}

async fn submit(client: &JobQueueClient, args: SubmitArgs, json: bool) -> Result<(), Failure> {
    let SubmitArgs {
        user,
        photo,
        image_url,
        force,
        schema_version,
        prompt_version,
    } = args;
    let image_sha256 = match &photo.file {
        Some(path) => sha256_hex(read(path)?),
        // clap requires --sha256 without --file (and the server names an empty one).
        None => photo.sha256.unwrap_or_default(),
    };
    let mut request = SubmitJob::new(user, image_url, image_sha256).force(force);
    if let Some(version) = schema_version {
        request = request.schema_version(version);
    }
    if let Some(version) = prompt_version {
        request = request.prompt_version(version);
    }
    let submitted = client.submit_job(request).await?;
    emit(&if json {
        output::document(&json!({
            "deduplicated": submitted.deduplicated,
            "job": output::job_json(&submitted.job),
        }))
    } else {
        let mut rows = output::job_rows(&submitted.job);
        rows.push(("deduplicated", output::yes_no(submitted.deduplicated)));
        output::key_values(&rows)
    })
}

async fn list(client: &JobQueueClient, args: ListArgs, json: bool) -> Result<(), Failure> {
    let ListArgs {
        user,
        status,
        page_size,
        page_token,
        all,
    } = args;
    let mut request = ListJobs::new(user);
    if let Some(status) = status {
        request = request.status(status.into());
    }
    if let Some(size) = page_size {
        request = request.page_size(size);
    }
    if let Some(token) = page_token {
        request = request.page_token(token);
    }
    let mut jobs = Vec::new();
    let next_page_token = loop {
        let page = client.list_jobs(request.clone()).await?;
        jobs.extend(page.jobs);
        match page.next_page_token {
            Some(token) if all => request = request.page_token(token),
            next => break next,
        }
    };
    emit(&if json {
        output::document(&json!({
            "jobs": jobs.iter().map(output::job_json).collect::<Vec<_>>(),
            "next_page_token": next_page_token,
        }))
    } else {
        output::job_table(&jobs, next_page_token.as_deref())
    })
}

async fn watch(client: &JobQueueClient, args: WatchArgs, json: bool) -> Result<(), Failure> {
    let WatchArgs { user, jobs, count } = args;
    let request = user
        .map_or_else(WatchJobs::all, WatchJobs::user)
        .job_ids(jobs);
    let mut events = pin!(client.watch_jobs(request));
    let mut interrupted = pin!(tokio::signal::ctrl_c());
    let mut seen = 0;
    while count.is_none_or(|count| seen < count) {
        let event = tokio::select! {
            event = events.next() => event,
            signal = &mut interrupted => {
                return signal.map_err(|source| Failure::Local {
                    what: "cannot listen for Ctrl-C".into(),
                    source,
                });
            }
        };
        let Some(event) = event else {
            break;
        };
        let event = event?;
        emit(&if json {
            format!("{}\n", output::event_json(&event))
        } else {
            output::event_line(&event)
        })?;
        seen += 1;
    }
    Ok(())
}

fn emit_job(job: &jobq_client::Job, json: bool) -> Result<(), Failure> {
    emit(&if json {
        output::document(&output::job_json(job))
    } else {
        output::key_values(&output::job_rows(job))
    })
}

fn emit_plan(user: Uuid, plan: &str, json: bool) -> Result<(), Failure> {
    emit(&if json {
        output::document(&json!({ "user_id": user.to_string(), "plan": plan }))
    } else {
        output::key_values(&[("user_id", user.to_string()), ("plan", plan.to_owned())])
    })
}

/// Writes `text` to stdout at once (so that each watch event shows as it comes).
fn emit(text: &str) -> Result<(), Failure> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(Failure::Output)
}
