//! An echo server with one worker per connection and plain blocking-style socket code
//! (`umcg_runtime::io`), plus a bounded load generator in the same process: M clients,
//! each K round trips of S bytes, every echo verified. Exits 0 when all match.
//!
//! ```text
//! cargo run --release --example echo_server -- [clients=8] [round_trips=100] [size=256]
//! ```
//!
//! The server listens on 127.0.0.1, port 0 (the port is printed). Once every client is
//! done, a `CancelToken` ends the acceptor's blocked `accept`; connection workers end at
//! their client's EOF.

use std::error::Error;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Instant;

use umcg::runtime::Runtime;
use umcg::runtime::cancel::{CancelToken, Cancelled};
use umcg::runtime::io::{self, Yielding};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

fn arg(n: usize, default: usize) -> Res<usize> {
    match std::env::args().nth(n) {
        None => Ok(default),
        Some(s) => Ok(s
            .parse()
            .map_err(|e| format!("argument {n} ({s:?}): {e}"))?),
    }
}

/// Echo until EOF; returns the bytes echoed.
fn serve(s: TcpStream) -> Res<usize> {
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    loop {
        let n = io::recv(&s, &mut buf, 0)?;
        if n == 0 {
            return Ok(total);
        }
        let mut off = 0;
        while off < n {
            off += io::send(&s, &buf[off..n], 0)?;
        }
        total += n;
    }
}

/// Client `c`: `k` round trips of `size` bytes, each echo compared; returns bytes sent.
fn client(addr: SocketAddr, c: usize, k: usize, size: usize) -> Res<usize> {
    let s = Yielding::new(io::connect_tcp(addr)?);
    let mut msg = vec![0u8; size];
    let mut got = vec![0u8; size];
    for round in 0..k {
        for (i, b) in msg.iter_mut().enumerate() {
            *b = (i ^ c.wrapping_mul(131) ^ round.wrapping_mul(7)) as u8;
        }
        (&s).write_all(&msg)?;
        (&s).read_exact(&mut got)?;
        if got != msg {
            return Err(format!("client {c}: round trip {round} echoed different bytes").into());
        }
    }
    Ok(k * size)
}

fn main() -> Res<()> {
    let (clients, k, size) = (arg(1, 8)?, arg(2, 100)?, arg(3, 256)?);
    let rt = Runtime::new()?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    println!("echo_server: listening on 127.0.0.1:{}", addr.port());

    let stop = CancelToken::new();
    let st = stop.clone();
    let acceptor = rt.spawn(move || -> Res<(usize, usize)> {
        let mut conns = Vec::new();
        loop {
            match st.run(|| io::accept_tcp(&listener)) {
                Ok((s, _peer)) => conns.push(umcg::runtime::spawn(move || serve(s))),
                Err(e) if Cancelled::is(&e) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let n = conns.len();
        let mut echoed = 0;
        for c in conns {
            echoed += c.join().map_err(|e| e.to_string())??;
        }
        Ok((n, echoed))
    });

    let t0 = Instant::now();
    let hs: Vec<_> = (0..clients)
        .map(|c| rt.spawn(move || client(addr, c, k, size)))
        .collect();
    let mut sent = 0;
    for h in hs {
        sent += h.join().map_err(|e| e.to_string())??;
    }
    let elapsed = t0.elapsed();
    stop.cancel();
    let (conns, echoed) = acceptor.join().map_err(|e| e.to_string())??;
    rt.shutdown()?;

    if conns != clients || echoed != sent || sent != clients * k * size {
        return Err(format!(
            "{conns} connections for {clients} clients, {echoed} bytes echoed of {sent}"
        )
        .into());
    }
    println!(
        "echo_server: {clients} clients x {k} round trips x {size} B verified in {elapsed:?} ({:.0} round trips/s)",
        (clients * k) as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
