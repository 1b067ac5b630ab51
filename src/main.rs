//! The command line: parse arguments and hand over to the library. Nothing else lives here.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use qpm_operator::{cli, controller, probe, sim};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "qpm-operator",
    version,
    about = "Manage Qualys Patch Management deployment jobs declaratively"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller (in a cluster, or against the current kubeconfig context).
    Run(Box<controller::RunArgs>),
    /// Serve the Qualys PM API simulator.
    Sim(sim::SimArgs),
    /// Print the DeploymentJob CustomResourceDefinition (YAML).
    Crd,
    /// Show what apply would change (exit 0: nothing, 2: changes, 1: error).
    Plan(cli::plan::PlanArgs),
    /// Make Qualys match the manifests (exit 0: done, 1: any failure).
    Apply(cli::apply::ApplyArgs),
    /// Write manifests for existing Qualys jobs.
    Import(cli::import::ImportArgs),
    /// Verify a connection: credentials, PM.API.ACCESS, and each endpoint the operator uses.
    Check(cli::check::CheckArgs),
    /// Record how a gateway behaves (paging, rate limits, errors, deletes) as a JSON report.
    Probe(probe::ProbeArgs),
}

fn print_crd() -> anyhow::Result<()> {
    cli::output::out(&qpm_operator::api::crd_yaml()?);
    Ok(())
}

/// Installed as `kubectl-qpm` (krew, or a symlink on PATH), the binary is `kubectl qpm`: kubectl
/// runs it with the words after `qpm`, and help and errors must name the command the user typed.
const KUBECTL_PLUGIN: &str = "kubectl-qpm";

fn parse_cli() -> Cli {
    let invoked_as = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_stem().map(|s| s.to_os_string()));
    let mut command = Cli::command();
    if invoked_as.is_some_and(|s| s == KUBECTL_PLUGIN) {
        command = command
            .name(KUBECTL_PLUGIN)
            .bin_name("kubectl qpm")
            .display_name("kubectl qpm");
        // The controller, the simulator and the gateway probe are not kubectl verbs; they still
        // run when named.
        for hidden in ["run", "sim", "crd", "probe"] {
            command = command.mut_subcommand(hidden, |c| c.hide(true));
        }
    }
    Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let cli = parse_cli();
    // One crypto provider for the whole process (reqwest and kube both use rustls on ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => controller::run(*args).await.map(|()| ExitCode::SUCCESS),
            Command::Sim(args) => sim::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Crd => print_crd().map(|()| ExitCode::SUCCESS),
            Command::Plan(args) => cli::plan::run(args).await,
            Command::Apply(args) => cli::apply::run(args).await,
            Command::Import(args) => cli::import::run(args).await,
            Command::Check(args) => cli::check::run(args).await,
            Command::Probe(args) => probe::run(args).await,
        }
    });
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            cli::output::err_line(&format!("error: {e:#}"));
            ExitCode::FAILURE
        }
    };
    match cli::output::write_failure() {
        Some(failure) => {
            cli::output::err_line(&format!("error: {failure}"));
            ExitCode::FAILURE
        }
        None => code,
    }
}
