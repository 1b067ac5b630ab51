//! A faithful stand-in for the Qualys PM gateway (an axum server on loopback).

use clap::Args;

/// `qpm-operator sim`: serve the simulator.
#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
}

pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    anyhow::bail!("the simulator is not built yet (listen {})", args.listen)
}
