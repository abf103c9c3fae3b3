//! Command-line surface of the registry: the `RegistryArgs` the `run` command flattens, and `observer registry
//! check | import | fingerprint`.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fingerprint::{key_suffix, KeySecret};
use super::load::{load_file, Problem, Problems, RegistryError};
use super::watch::LiveRegistry;
use super::yaml::scalar;

pub const DEFAULT_KEY_SECRET_FILE: &str = "/var/lib/observer/key-secret";

/// `--key-secret-file`, shared by `run`, `registry import` and `registry fingerprint`.
#[derive(Debug, Clone, clap::Args)]
pub struct KeySecretArgs {
    /// Per-deployment secret that keys API-key fingerprints (HMAC-SHA256). Created (mode 0600, 32 random bytes)
    /// when absent; copy it to every node of a deployment so fingerprints agree.
    #[arg(long, env = "OBSERVER_KEY_SECRET_FILE", value_name = "PATH", default_value = DEFAULT_KEY_SECRET_FILE)]
    pub key_secret_file: PathBuf,
}

impl KeySecretArgs {
    pub fn load(&self) -> Result<KeySecret, RegistryError> {
        Ok(KeySecret::load_or_create(&self.key_secret_file)?)
    }
}

/// Registry options of the `run` command.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Registry of APIs, applications, keys and teams (YAML; see examples/registry.yaml). Reloaded on change.
    /// Without it events get inferred routes only.
    #[arg(long, env = "OBSERVER_REGISTRY", value_name = "PATH")]
    pub registry: Option<PathBuf>,
    #[command(flatten)]
    pub secret: KeySecretArgs,
}

impl RegistryArgs {
    /// Loads (creating if needed) the key secret and the registry. Fails on an invalid registry, listing every
    /// problem as FILE:LINE: message. Start hot reload with `LiveRegistry::spawn_watcher`.
    pub fn open(&self) -> Result<Arc<LiveRegistry>, RegistryError> {
        let secret = self.secret.load()?;
        LiveRegistry::open(self.registry.as_deref(), secret)
    }
}

/// `observer registry ...`
#[derive(Debug, clap::Args)]
pub struct RegistryCommand {
    #[command(subcommand)]
    pub action: RegistryAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum RegistryAction {
    /// Validate a registry file; prints every problem as FILE:LINE: message and exits non-zero if any.
    Check {
        file: PathBuf,
        #[command(flatten)]
        secret: KeySecretArgs,
    },
    /// Print registry YAML (to merge) from an OpenAPI 3 document or a Kong declarative config.
    Import {
        /// OpenAPI 3 document (YAML or JSON): servers -> matcher, security scheme -> auth, paths -> routes.
        #[arg(
            long,
            value_name = "SPEC",
            conflicts_with = "kong",
            required_unless_present = "kong"
        )]
        openapi: Option<PathBuf>,
        /// Kong declarative config: services -> apis, consumers -> applications, credentials -> keys, ACLs -> grants.
        #[arg(long, value_name = "FILE")]
        kong: Option<PathBuf>,
        /// Fail (exit non-zero, print nothing to merge) when anything was dropped or approximated.
        #[arg(long)]
        strict: bool,
        /// Keys the fingerprints of Kong credentials; OpenAPI import reads no secret.
        #[command(flatten)]
        secret: KeySecretArgs,
    },
    /// Print the registry fingerprint and display suffix of an API key (read from stdin when KEY is absent or `-`;
    /// prefer stdin, command lines end up in shell history).
    Fingerprint {
        key: Option<String>,
        #[command(flatten)]
        secret: KeySecretArgs,
    },
}

/// Registry YAML from an importer and what it dropped or approximated (lines of the source document).
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub yaml: String,
    pub notes: Vec<Problem>,
}

/// Imports an OpenAPI document; needs no key secret (nothing is fingerprinted).
pub fn import_openapi(spec: &Path) -> Result<Imported, RegistryError> {
    let parsed =
        super::import_openapi::read_spec(spec).map_err(|message| RegistryError::Import {
            path: spec.to_path_buf(),
            message,
        })?;
    Ok(Imported {
        yaml: super::import_openapi::to_registry_yaml(&parsed, &spec.display().to_string()),
        notes: parsed.notes,
    })
}

/// Imports a Kong declarative config, fingerprinting its credentials with `secret`.
pub fn import_kong(kong: &Path, secret: &KeySecret) -> Result<Imported, RegistryError> {
    let text = super::yaml::read_text(kong).map_err(|source| RegistryError::Read {
        path: kong.to_path_buf(),
        source,
    })?;
    let today = crate::event::Timestamp::now().to_rfc3339()[..10].to_string();
    let (yaml, notes) =
        super::import_kong::import(&text, &kong.display().to_string(), secret, &today).map_err(
            |message| RegistryError::Import {
                path: kong.to_path_buf(),
                message,
            },
        )?;
    Ok(Imported { yaml, notes })
}

/// Prints what an import dropped or approximated on stderr as `FILE:LINE: message` plus a count; with `strict`
/// any of it is an error.
fn report_notes(source: &Path, notes: &[Problem], strict: bool) -> Result<(), RegistryError> {
    if notes.is_empty() {
        return Ok(());
    }
    eprintln!(
        "{}",
        Problems {
            path: source,
            problems: notes
        }
    );
    eprintln!(
        "{}: {} item(s) dropped or approximated (see above)",
        source.display(),
        notes.len()
    );
    if strict {
        return Err(RegistryError::Strict {
            path: source.to_path_buf(),
            count: notes.len(),
        });
    }
    Ok(())
}

/// Runs a registry subcommand, printing results to stdout.
pub fn run(cmd: RegistryCommand) -> Result<(), RegistryError> {
    match cmd.action {
        RegistryAction::Check { file, secret } => {
            let secret = secret.load()?;
            let loaded = match load_file(&file, &secret) {
                Ok(l) => l,
                Err(RegistryError::Invalid { path, problems }) => {
                    eprintln!(
                        "{}",
                        Problems {
                            path: &path,
                            problems: &problems
                        }
                    );
                    eprintln!("{}: {} problem(s)", path.display(), problems.len());
                    std::process::exit(1);
                }
                Err(e) => return Err(e),
            };
            let r = &loaded.registry;
            println!(
                "{}: ok ({} teams, {} apis, {} applications, {} keys)",
                file.display(),
                r.teams.len(),
                r.apis.len(),
                r.applications.len(),
                r.keys.len()
            );
            Ok(())
        }
        RegistryAction::Import {
            openapi,
            kong,
            strict,
            secret,
        } => {
            let (source, imported) = match (openapi, kong) {
                (Some(spec), _) => {
                    let imported = import_openapi(&spec)?;
                    (spec, imported)
                }
                (None, Some(kong)) => {
                    let imported = import_kong(&kong, &secret.load()?)?;
                    (kong, imported)
                }
                (None, None) => unreachable!("clap requires --openapi or --kong"),
            };
            report_notes(&source, &imported.notes, strict)?;
            print!("{}", imported.yaml);
            Ok(())
        }
        RegistryAction::Fingerprint { key, secret } => {
            let secret = secret.load()?;
            let key = match key.filter(|k| k != "-") {
                Some(k) => k,
                None => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .map_err(RegistryError::Stdin)?;
                    s
                }
            };
            let key = key.trim();
            if key.is_empty() {
                return Err(RegistryError::EmptyKey);
            }
            println!("fingerprint: {}", secret.fingerprint_hex(key.as_bytes()));
            println!("suffix: {}", scalar(key_suffix(key)));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Parser)]
    struct RunLike {
        #[command(flatten)]
        registry: RegistryArgs,
    }

    #[derive(Parser)]
    struct Top {
        #[command(subcommand)]
        cmd: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        Registry(RegistryCommand),
    }

    #[test]
    fn clap_definitions_are_consistent() {
        RunLike::command().debug_assert();
        Top::command().debug_assert();
    }

    #[test]
    fn run_flattens_registry_args() {
        let a = RunLike::try_parse_from(["run"]).expect("defaults parse");
        assert_eq!(a.registry.registry, None);
        assert_eq!(
            a.registry.secret.key_secret_file,
            PathBuf::from(DEFAULT_KEY_SECRET_FILE)
        );
        let a =
            RunLike::try_parse_from(["run", "--registry", "r.yaml", "--key-secret-file", "/tmp/s"])
                .expect("parses");
        assert_eq!(a.registry.registry, Some(PathBuf::from("r.yaml")));
        assert_eq!(a.registry.secret.key_secret_file, PathBuf::from("/tmp/s"));
    }

    #[test]
    fn subcommands_parse() {
        let Top {
            cmd: Sub::Registry(c),
        } = Top::try_parse_from([
            "x",
            "registry",
            "check",
            "r.yaml",
            "--key-secret-file",
            "/s",
        ])
        .expect("check parses");
        assert!(
            matches!(c.action, RegistryAction::Check { ref file, .. } if file == Path::new("r.yaml"))
        );
        assert!(
            Top::try_parse_from(["x", "registry", "import"]).is_err(),
            "import needs a source"
        );
        assert!(
            Top::try_parse_from(["x", "registry", "import", "--openapi", "a", "--kong", "b"])
                .is_err(),
            "one source at a time"
        );
        let Top {
            cmd: Sub::Registry(c),
        } = Top::try_parse_from(["x", "registry", "fingerprint"]).expect("stdin form");
        assert!(matches!(
            c.action,
            RegistryAction::Fingerprint { key: None, .. }
        ));
    }

    #[test]
    fn open_creates_the_secret_and_loads_the_registry() {
        let dir = std::env::temp_dir().join(format!("observer-cli-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let args = RegistryArgs {
            registry: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/registry.yaml")),
            secret: KeySecretArgs {
                key_secret_file: dir.join("secret"),
            },
        };
        let live = args
            .open()
            .unwrap_or_else(|e| panic!("example registry opens: {e}"));
        assert!(dir.join("secret").exists(), "secret created on first run");
        assert_eq!(live.snapshot().registry.apis.len(), 4);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn openapi_import_reads_no_key_secret() {
        let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/payments-openapi.yaml");
        let Top {
            cmd: Sub::Registry(c),
        } = Top::try_parse_from([
            "x",
            "registry",
            "import",
            "--openapi",
            spec.to_str().expect("utf-8 path"),
            "--key-secret-file",
            "/proc/observer-no-such-dir/secret",
        ])
        .expect("parses");
        let RegistryAction::Import {
            openapi: Some(spec),
            secret,
            ..
        } = c.action
        else {
            panic!("import action");
        };
        assert!(secret.load().is_err(), "the secret path is unusable");
        let imported = import_openapi(&spec).unwrap_or_else(|e| panic!("no secret needed: {e}"));
        assert!(
            imported.yaml.contains("id: payments-api"),
            "{}",
            imported.yaml
        );
        assert!(!secret.key_secret_file.exists());
    }

    #[test]
    fn strict_turns_notes_into_an_error() {
        let notes = [Problem {
            line: 4,
            message: "extension `x-a` under `paths` ignored".into(),
        }];
        report_notes(Path::new("s.yaml"), &notes, false).expect("reported, not fatal");
        let err = report_notes(Path::new("s.yaml"), &notes, true).expect_err("strict fails");
        assert_eq!(
            err.to_string(),
            "s.yaml: --strict: 1 item(s) dropped or approximated by the import"
        );
        report_notes(Path::new("s.yaml"), &[], true).expect("nothing dropped passes strict");
    }
}
