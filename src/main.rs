//! The `keyprov` command line: parse flags, set up logging, dispatch to `keyprov::commands`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use keyprov::commands::{self, keys, reconcile, status, validate};
use keyprov::config::{self, Config};
use keyprov::exit::Exit;
use keyprov::plan::RotateRequest;

/// Declarative key provisioning: AWS KMS data key pairs into files and Secrets Manager,
/// rotated on schedule.
/// `keyprov --version`: the package version and the git revision it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("KEYPROV_REVISION"),
    ")"
);

/// The exit codes, under every `--help`.
const EXIT_CODES: &str = "Exit codes: 0 converged / nothing to do; 1 a key failed (status: a key \
is failed or failing); 2 invalid configuration or manifest; 3 plan: changes pending. When several \
apply, 2 beats 1 beats 3 beats 0. 64 usage error; 75 stateDir lock held (--no-wait).";

#[derive(Parser)]
#[command(name = "keyprov", version = VERSION, about, long_about = None, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Daemon configuration file.
    #[arg(long = "config", short = 'c', env = "KEYPROV_CONFIG", default_value = config::DEFAULT_PATH)]
    path: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile: as a daemon, or once with --once (CI).
    #[command(after_help = EXIT_CODES)]
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Reconcile one time and exit: 0 converged, 1 a key failed, 2 invalid input (2 beats 1).
        #[arg(long)]
        once: bool,
        /// With --once: exit 75 at once when another process holds the stateDir lock.
        #[arg(long, requires = "once")]
        no_wait: bool,
        /// With --once: write the metrics to F afterwards (Prometheus text format, atomically,
        /// mode 0644), for node-exporter's textfile collector.
        #[arg(long, value_name = "F", requires = "once")]
        metrics_file: Option<std::path::PathBuf>,
    },
    /// Show what `run --once` would do; changes nothing. Exit 3 when changes are pending.
    ///
    /// Exit 3 when changes are pending, unless an error outranks it: 2 an invalid manifest,
    /// 1 a key that cannot be planned.
    #[command(after_help = EXIT_CODES)]
    Plan {
        #[command(flatten)]
        config: ConfigArg,
        /// Print one JSON document (changes, failures, problems, next rotations).
        #[arg(long)]
        json: bool,
    },
    /// Check manifests offline; no credentials needed.
    #[command(after_help = EXIT_CODES)]
    Validate {
        #[command(flatten)]
        config: ConfigArg,
        /// Manifest files or directories (default: the configuration's).
        paths: Vec<PathBuf>,
        /// Print one JSON document (valid, counts, every problem).
        #[arg(long)]
        json: bool,
    },
    /// Every key: generation, spec, age, next rotation, outputs.
    ///
    /// Exit 1 when a key is failed (cannot be observed) or failing (its last reconcile or an
    /// onRotate hook failed), 2 when a manifest is invalid.
    #[command(after_help = EXIT_CODES)]
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a rotation of NAME now (staged when publishAhead is set).
    ///
    /// Without --now, a generation already staged is left to activate at its time and nothing
    /// changes. With --now, a fresh pair is made and activated at once; a generation staged
    /// before it is never activated (it goes). A NAME no manifest defines is a usage error
    /// (exit 64), as is rotate on a consumer host.
    #[command(after_help = EXIT_CODES)]
    Rotate {
        /// Key pair name.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Make a fresh pair and activate it at once, skipping publishAhead: the emergency path
        /// (a staged generation, made before it, is replaced, never activated).
        #[arg(long)]
        now: bool,
        /// Exit 75 at once when another process holds the stateDir lock.
        #[arg(long)]
        no_wait: bool,
    },
    /// Print the private key of NAME as PEM, decrypted by the provider.
    #[command(after_help = EXIT_CODES)]
    Decrypt {
        /// Key pair name.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Generation to decrypt, as a number (1) or a version name (v0001); default: current.
        #[arg(long, value_parser = keyprov::commands::decrypt_out::parse_generation)]
        version: Option<u32>,
        /// Write to this file (mode 0600) instead of stdout: a new path or a regular file, which
        /// is replaced; anything else (a device, symlink, FIFO, directory) is refused. `-`:
        /// stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Decrypt every current and next (staged) pair and check it matches its public key.
    #[command(after_help = EXIT_CODES)]
    Verify {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the JSON Schema of the manifest (for editors).
    Schema,
    /// Print a shell completion script (bash: `source <(keyprov completions bash)`).
    Completions {
        /// bash, zsh or fish (the shells whose scripts are tested).
        #[arg(value_parser = supported_shell())]
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff; default keyprov(1)): `keyprov man run | man -l -`; `--dir D`
    /// writes every page (keyprov(1), keyprov-SUBCOMMAND(1), keyprov.yaml(5),
    /// keyprov-manifest(5)) into D.
    Man {
        /// Page: a subcommand (`run`), `keyprov.yaml` or `keyprov-manifest`.
        page: Option<String>,
        /// Write every page into this directory (created when missing) instead.
        #[arg(long, value_name = "DIR", conflicts_with = "page")]
        dir: Option<PathBuf>,
    },
}

/// The `completions` shells: those whose scripts are tested, not every one clap_complete knows.
fn supported_shell() -> impl clap::builder::TypedValueParser<Value = clap_complete::Shell> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["bash", "zsh", "fish"])
        .map(|shell| shell.parse().expect("a shell clap_complete knows"))
}

fn with_config(path: &std::path::Path, body: impl FnOnce(Config) -> Exit) -> Exit {
    match commands::load_config(path) {
        Ok(config) => {
            if let Err(err) = keyprov::logging::check_env() {
                keyprov::errln!("error: {err}");
                return Exit::Invalid;
            }
            keyprov::logging::init(config.log_format, &config.log_level);
            body(config)
        }
        Err(exit) => exit,
    }
}

fn lock_wait(no_wait: bool) -> reconcile::LockWait {
    if no_wait {
        reconcile::LockWait::NoWait
    } else {
        reconcile::LockWait::Wait
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime")
}

/// Keeps key material out of core dumps and away from same-user debuggers: no core file
/// (RLIMIT_CORE 0, soft and hard, inherited by hooks) and not dumpable (which also makes
/// /proc/PID/{environ,mem,...} root-owned and stops same-uid ptrace). Done first thing, before
/// anything may hold a plaintext private key.
fn harden() -> Result<(), String> {
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_CORE, 0, 0)
        .map_err(|e| format!("cannot set RLIMIT_CORE to 0: {e}"))?;
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| format!("cannot make the process non-dumpable (PR_SET_DUMPABLE): {e}"))
}

/// Parses the command line; `--help` and `--version` print and exit 0, usage errors exit 64.
fn parse() -> Result<Cli, Exit> {
    Cli::try_parse().map_err(|error| {
        let exit = match error.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Exit::Ok,
            _ => Exit::Usage,
        };
        // Help goes to stdout, errors to stderr; a closed pipe is not worth a panic.
        let _ = error.print();
        exit
    })
}

fn main() -> ExitCode {
    // The AWS SDK logs whole request bodies at trace level when LOG_SIGNABLE_BODY=true; a
    // PutSecretValue body holds the plaintext private key with includePlaintext.
    // SAFETY: first thing in main, before any other thread exists.
    unsafe { std::env::remove_var("LOG_SIGNABLE_BODY") };
    if let Err(err) = harden() {
        keyprov::errln!("error: {err}");
        return ExitCode::from(Exit::KeyFailed.code());
    }
    let cli = match parse() {
        Ok(cli) => cli,
        Err(exit) => return ExitCode::from(exit.code()),
    };
    let exit = match cli.command {
        Command::Run {
            config,
            once,
            no_wait,
            metrics_file,
        } => with_config(&config.path, |config| {
            if once {
                if metrics_file.is_some() {
                    keyprov::metrics::enable();
                }
                let exit = runtime().block_on(reconcile::run_once(&config, lock_wait(no_wait)));
                match metrics_file {
                    Some(path) => match keyprov::metrics::write_textfile(&path) {
                        Ok(()) => exit,
                        Err(err) => {
                            keyprov::output::error(format!(
                                "cannot write the metrics file {}: {err}",
                                path.display()
                            ));
                            exit.max(keyprov::exit::Exit::KeyFailed)
                        }
                    },
                    None => exit,
                }
            } else {
                let runtime = runtime();
                let exit = runtime.block_on(keyprov::daemon::run(config));
                // A blocking task may still wait for the stateDir lock held by another
                // keyprov; a stop must not wait for it.
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
                exit
            }
        }),
        Command::Plan { config, json } => with_config(&config.path, |config| {
            runtime().block_on(reconcile::plan(&config, json))
        }),
        Command::Validate {
            config,
            paths,
            json,
        } => validate::validate(&config.path, &paths, json),
        Command::Status { config, json } => with_config(&config.path, |config| {
            runtime().block_on(status::status(&config, json))
        }),
        Command::Rotate {
            name,
            config,
            now,
            no_wait,
        } => with_config(&config.path, |config| {
            // A consumer follows the writers: a generation of its own (or one activated ahead
            // of the secret's AWSCURRENT) would set its files apart from the fleet.
            if config.fleet.role == keyprov::fleet::Role::Consumer {
                keyprov::output::error(format_args!(
                    "rotate {name}: this host is a consumer (fleet.role: consumer in {}): it never \
                     makes nor activates a generation itself; rotate on a writer, this host follows",
                    config.path.display()
                ));
                return Exit::Usage;
            }
            let request = RotateRequest { name, now };
            runtime().block_on(reconcile::rotate(&config, &request, lock_wait(no_wait)))
        }),
        Command::Decrypt {
            name,
            config,
            version,
            out,
        } => with_config(&config.path, |config| {
            runtime().block_on(keys::decrypt(&config, &name, version, out.as_deref()))
        }),
        Command::Verify { config } => with_config(&config.path, |config| {
            runtime().block_on(keys::verify(&config))
        }),
        Command::Schema => validate::schema(),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "keyprov", &mut script);
            keyprov::output::out(&script);
            Exit::Ok
        }
        Command::Man { page, dir } => {
            keyprov::commands::man::man(Cli::command(), page.as_deref(), dir.as_deref())
        }
    };
    let exit = if keyprov::output::stdout_failed() {
        exit.max(Exit::KeyFailed)
    } else {
        exit
    };
    ExitCode::from(exit.code())
}

/// Parsing thousands of manifests allocates many small objects; mimalloc does this faster and
/// with less contention between threads than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
