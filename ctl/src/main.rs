use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lb_proto::process::man_page_if_asked::<lbctl::cli::Cli>();
    let cli = lbctl::cli::Cli::parse();
    match lbctl::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
