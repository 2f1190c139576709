//! A TCP proxy on loopback that stands between one idem process and one service, to partition them:
//! **forward** copies bytes both ways; **black-hole** keeps every socket open but stops copying (the
//! sender's writes fill the buffers and then block, reads wait forever — as when packets are
//! dropped on the path; new connections are accepted and hang the same way); **reset** closes every
//! connection with a TCP RST and resets new ones at once (as when a firewall rejects).
//!
//! Invariant: switching back to forward resumes the held connections where they stopped (bytes
//! held during a black-hole are delivered late, as TCP would after a partition heals); nothing is
//! dropped silently except by reset, which the peers see as a reset.

use anyhow::Context;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    BlackHole,
    Reset,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Forward => "forward",
            Mode::BlackHole => "black-hole",
            Mode::Reset => "reset",
        }
    }
}

pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a proxy")?;
        let port = listener.local_addr()?.port();
        let (mode, rx) = watch::channel(Mode::Forward);
        let target: SocketAddr = ([127, 0, 0, 1], upstream).into();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let _ = connection(client, target, rx).await;
                });
            }
        });
        Ok(Proxy { port, mode, task })
    }

    pub fn set(&self, mode: Mode) {
        let _ = self.mode.send(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Closes a socket with RST instead of FIN (`SO_LINGER` 0).
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

/// One proxied connection.
async fn connection(
    client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
) -> anyhow::Result<()> {
    // A new connection waits while black-holed, and is reset in reset mode.
    loop {
        let m = *mode.borrow_and_update();
        match m {
            Mode::Forward => break,
            Mode::Reset => {
                reset(client);
                return Ok(());
            }
            Mode::BlackHole => {
                if mode.changed().await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    let upstream = match TcpStream::connect(target).await {
        Ok(u) => u,
        Err(_) => {
            reset(client);
            return Ok(());
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let up = pump(&mut cr, &mut uw, mode.clone());
    let down = pump(&mut ur, &mut cw, mode.clone());
    let ended = tokio::select! {
        r = up => r,
        r = down => r,
    };
    if ended == Ended::Reset {
        if let (Ok(c), Ok(u)) = (cr.reunite(cw), ur.reunite(uw)) {
            reset(c);
            reset(u);
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Closed,
    Reset,
}

/// Copies `from` to `to` while forwarding; holds while black-holed; ends on reset or EOF.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) -> Ended {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let m = *mode.borrow_and_update();
        match m {
            Mode::Reset => return Ended::Reset,
            Mode::BlackHole => {
                if mode.changed().await.is_err() {
                    return Ended::Closed;
                }
                continue;
            }
            Mode::Forward => {}
        }
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() {
                    return Ended::Closed;
                }
            }
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return Ended::Closed;
                }
                Ok(n) => {
                    // A write that blocks is abandoned only by a reset; a black-hole that begins
                    // mid-write lets this write finish (the bytes were already "on the wire").
                    if to.write_all(&buf[..n]).await.is_err() {
                        return Ended::Closed;
                    }
                }
            },
        }
    }
}
