//! A TCP proxy on the host's loopback between the guest's forwarded connections and the update
//! server, that can slow the server-to-guest direction to a set number of bytes per second and
//! be switched back to full speed at any time. Scenarios use it to make a download last long
//! enough to pull the plug in the middle of it, even though TCG timing varies from run to run.
//! Plain threads: the harness is synchronous, and a handful of connections is all it carries.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A running proxy from `127.0.0.1:port()` to an upstream port; stops accepting on drop.
pub struct Throttle {
    port: u16,
    rate: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    down: Arc<AtomicU64>,
}

impl Throttle {
    /// Proxies a fresh loopback port to `127.0.0.1:upstream`, sending at most
    /// `bytes_per_sec` towards the client per connection (0: no limit).
    pub fn start(upstream: u16, bytes_per_sec: u64) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the throttle proxy")?;
        let port = listener.local_addr()?.port();
        let rate = Arc::new(AtomicU64::new(bytes_per_sec));
        let stop = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicU64::new(0));
        let (r, s, d) = (rate.clone(), stop.clone(), down.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue; // the client sees the connection close, like a refused connect
                };
                let (r, d) = (r.clone(), d.clone());
                let _ = pipe_both(client, server, r, d);
            }
        });
        Ok(Self {
            port,
            rate,
            stop,
            down,
        })
    }

    /// The loopback port to point the guest's forward at.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Changes the limit for every connection, including open ones (0: no limit).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Bytes sent towards clients so far.
    pub fn bytes_down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pipe_both(
    client: TcpStream,
    server: TcpStream,
    rate: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
) -> Result<()> {
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    thread::spawn(move || copy(client, server, None, None));
    thread::spawn(move || copy(s2, c2, Some(rate), Some(down)));
    Ok(())
}

/// Copies `from` to `to` until either side closes; paced to `rate` bytes/s when given.
fn copy(
    mut from: TcpStream,
    mut to: TcpStream,
    rate: Option<Arc<AtomicU64>>,
    count: Option<Arc<AtomicU64>>,
) {
    let mut buf = vec![0u8; 64 << 10];
    // Pacing against a running budget rather than per chunk keeps the average exact
    // whatever the chunk sizes; it restarts whenever the rate changes.
    let mut window = (Instant::now(), 0u64, 0u64); // (start, bytes since start, rate)
    loop {
        let limit = rate.as_ref().map_or(0, |r| r.load(Ordering::Relaxed));
        // Small reads when throttled, so that the pace is smooth.
        let want = if limit == 0 {
            buf.len()
        } else {
            (limit / 20).clamp(1024, buf.len() as u64) as usize
        };
        let n = match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(c) = &count {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        if limit > 0 {
            if window.2 != limit {
                window = (Instant::now(), 0, limit);
            }
            window.1 += n as u64;
            let due = Duration::from_secs_f64(window.1 as f64 / limit as f64);
            let spent = window.0.elapsed();
            if due > spent {
                thread::sleep(due - spent);
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
