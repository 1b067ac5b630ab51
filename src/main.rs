//! The command line: parse arguments and hand over to the library. Nothing else lives here.

use clap::{Parser, Subcommand};
use qpm_operator::{controller, sim};

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
}

fn print_crd() -> anyhow::Result<()> {
    print!("{}", qpm_operator::api::crd_yaml()?);
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One crypto provider for the whole process (reqwest and kube both use rustls on ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => controller::run(*args).await,
            Command::Sim(args) => sim::run(args).await,
            Command::Crd => print_crd(),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
