//! Command-line configuration (clap, with the seeds' environment variables as
//! fallbacks).

use clap::Parser;

/// `socp-server`: a SOCP v1.3 chat server.
#[derive(Debug, Parser)]
#[command(name = "socp-server", version, about)]
pub struct ServerArgs {
    /// Where to listen, as ws://HOST:PORT.
    #[arg(long, default_value = "ws://127.0.0.1:8765")]
    pub bind: String,
    /// SQLite database file.
    #[arg(long, env = "DB_PATH", default_value = "chat.db")]
    pub db: String,
}

/// `socp-client`: the SOCP v1.3 terminal client.
#[derive(Debug, Parser)]
#[command(name = "socp-client", version, about)]
pub struct ClientArgs {
    /// Server to connect to, as ws://HOST:PORT.
    #[arg(long, default_value = "ws://127.0.0.1:8765")]
    pub server: String,
}
