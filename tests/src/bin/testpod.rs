//! `sluice-testpod`: the workload inside test pods (std only, no deps).
//!
//! serve NAME PORT                 TCP + UDP echo server; every reply starts with NAME
//! tcp ADDR:PORT COUNT             COUNT sequential connects; prints "NAME PEER" or "REFUSED"/"ERROR ..."
//! udp ADDR:PORT COUNT             COUNT unconnected sendto/recvfrom; prints "NAME FROM"
//! udp-connected ADDR:PORT COUNT   COUNT fresh connected UDP sockets; prints "NAME PEER"
//! load ADDR:PORT SECS PERSIST     new connections back to back for SECS, plus PERSIST
//!                                 long-lived connections pinged throughout; prints
//!                                 "new_ok=N new_failed=M persist_ok=P persist_failed=Q"
//! hold ADDR:PORT                  one connection: prints "NAME" once connected, then
//!                                 echoes a line per stdin line ("NAME line" or "BROKEN")
//! same-port A B PORT COUNT       COUNT times: from local PORT+i, one connection to A
//!                                 and, while it is open, one to B from the same port;
//!                                 then a ping on each; prints "NAME_A NAME_B PING_A PING_B"
//! port-reuse A B PORT COUNT      as same-port, but the connection to A is pinged and
//!                                 closed before B is dialled from its port
//! rr FILE CONNS SECS              benchmark: CONNS persistent connections (to the
//!                                 ADDR:PORT lines of FILE, round robin) doing request/
//!                                 response for SECS; prints "requests=N errors=E"
//! rr-pair FILE_A FILE_B NETNS_B CONNS SECS SLICE_MS
//!                                 benchmark: CONNS persistent connections to FILE_A's
//!                                 targets from here and CONNS to FILE_B's from netns
//!                                 NETNS_B (/run/netns), driven in alternating slices
//!                                 of SLICE_MS (A B B A ...) for SECS each; prints
//!                                 "a_requests=N a_secs=S b_requests=N b_secs=S errors=E"
//! crr FILE CONNS SECS             benchmark: CONNS threads doing connect, read the
//!                                 greeting, close, for SECS, walking FILE's targets;
//!                                 prints "conns=N errors=E connect_p50_us=.. connect_p99_us=.."
//! sink PORT                       TCP server that reads and discards everything
//! stream ADDR:PORT SECS           benchmark: one connection writing 128 KiB chunks for
//!                                 SECS; prints "bytes=N"
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let a = |i: usize| -> &str { args.get(i).map(String::as_str).unwrap_or_else(|| usage()) };
    match a(1) {
        "serve" => serve(a(2).to_string(), a(3).parse().unwrap_or_else(|_| usage())),
        "tcp" => tcp(addr(a(2)), num(a(3))),
        "udp" => udp(addr(a(2)), num(a(3)), false),
        "udp-connected" => udp(addr(a(2)), num(a(3)), true),
        "load" => load(addr(a(2)), num(a(3)), num(a(4))),
        "hold" => hold(addr(a(2))),
        "rr" => rr(&targets(a(2)), num(a(3)), num(a(4))),
        "rr-pair" => rr_pair(
            &targets(a(2)),
            &targets(a(3)),
            a(4),
            num(a(5)),
            num(a(6)),
            num(a(7)),
        ),
        mode @ ("same-port" | "port-reuse") => same_port(
            addr(a(2)),
            addr(a(3)),
            num(a(4)) as u16,
            num(a(5)) as u16,
            mode == "same-port",
        ),
        "crr" => crr(&targets(a(2)), num(a(3)), num(a(4))),
        "sink" => sink(a(2).parse().unwrap_or_else(|_| usage())),
        "stream" => stream(addr(a(2)), num(a(3))),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: sluice-testpod serve NAME PORT | tcp|udp|udp-connected ADDR:PORT COUNT | load ADDR:PORT SECS PERSIST | hold ADDR:PORT | same-port A B PORT COUNT | rr|crr FILE CONNS SECS | rr-pair FILE_A FILE_B NETNS_B CONNS SECS SLICE_MS | sink PORT | stream ADDR:PORT SECS"
    );
    std::process::exit(2)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|_| usage())
}

fn num(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| usage())
}

fn serve(name: String, port: u16) {
    let tcp = TcpListener::bind(("0.0.0.0", port)).expect("bind tcp");
    let udp = UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
    let uname = name.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            if let Ok((_, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(uname.as_bytes(), from);
            }
        }
    });
    // Readiness marker for the test harness.
    println!("serving {name} on {port}");
    let _ = std::io::stdout().flush();
    // A self-growing pool of accepting threads instead of a thread per
    // connection: spawning one per connection made thread creation, not
    // the network path, the cost a connection-rate benchmark measured.
    let tcp = std::sync::Arc::new(tcp);
    let idle = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    spawn_acceptor(tcp, idle, name);
    loop {
        std::thread::park();
    }
}

fn spawn_acceptor(
    tcp: std::sync::Arc<TcpListener>,
    idle: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    name: String,
) {
    use std::sync::atomic::Ordering::SeqCst;
    std::thread::spawn(move || {
        loop {
            idle.fetch_add(1, SeqCst);
            let conn = tcp.accept();
            // The last idle acceptor took a connection: grow the pool so
            // the next one is accepted while this one is served.
            if idle.fetch_sub(1, SeqCst) == 1 {
                spawn_acceptor(tcp.clone(), idle.clone(), name.clone());
            }
            if let Ok((conn, _)) = conn {
                echo(conn, &name);
            }
        }
    });
}

/// Greets with NAME, then answers each line with "NAME line".
fn echo(conn: TcpStream, name: &str) {
    let _ = conn.set_nodelay(true);
    let mut w = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    // One write per reply: split writes would meet Nagle and delayed ACKs
    // and measure 40 ms timers instead of the path.
    if w.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        if w.write_all(format!("{name} {line}\n").as_bytes()).is_err() {
            return;
        }
    }
}

fn connect_once(to: SocketAddr) -> Result<(String, TcpStream), String> {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            "REFUSED".to_string()
        } else {
            format!("ERROR {e}")
        }
    })?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok();
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| format!("ERROR read {e}"))?;
    if line.is_empty() {
        return Err("ERROR eof".into());
    }
    Ok((line.trim().to_string(), s))
}

fn tcp(to: SocketAddr, count: u64) {
    for _ in 0..count {
        match connect_once(to) {
            Ok((name, s)) => {
                let peer = s.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                println!("{name} {peer}");
            }
            Err(e) => println!("{e}"),
        }
    }
}

fn udp_socket() -> UdpSocket {
    let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    s
}

fn udp(to: SocketAddr, count: u64, connected: bool) {
    let mut buf = [0u8; 1500];
    // Unconnected: one socket reused (the interesting case for recvmsg
    // reverse translation); connected: a fresh socket per try.
    let shared = udp_socket();
    for _ in 0..count {
        let fresh;
        let s = if connected {
            fresh = udp_socket();
            if let Err(e) = fresh.connect(to) {
                println!("ERROR connect {e}");
                continue;
            }
            &fresh
        } else {
            &shared
        };
        let sent = if connected {
            s.send(b"hi")
        } else {
            s.send_to(b"hi", to)
        };
        if let Err(e) = sent {
            println!("ERROR send {e}");
            continue;
        }
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                let name = String::from_utf8_lossy(&buf[..n]);
                let shown = if connected {
                    s.peer_addr().map(|p| p.to_string()).unwrap_or_default()
                } else {
                    from.to_string()
                };
                println!("{name} {shown}");
            }
            Err(e) => println!("ERROR recv {e}"),
        }
    }
}

fn load(to: SocketAddr, secs: u64, persist: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut held: Vec<Option<(BufReader<TcpStream>, TcpStream)>> = (0..persist)
        .map(|_| {
            connect_once(to)
                .ok()
                .map(|(_, s)| (BufReader::new(s.try_clone().unwrap()), s))
        })
        .collect();
    let (mut new_ok, mut new_failed, mut persist_ok, mut persist_failed) = (0u64, 0u64, 0u64, 0u64);
    let mut round = 0u64;
    while Instant::now() < deadline {
        match connect_once(to) {
            Ok(_) => new_ok += 1,
            Err(e) => {
                new_failed += 1;
                eprintln!("new connection failed: {e}");
            }
        }
        round += 1;
        if round.is_multiple_of(20) {
            for h in held.iter_mut() {
                let ok = match h {
                    Some((r, w)) => {
                        let mut line = String::new();
                        writeln!(w, "ping").is_ok()
                            && r.read_line(&mut line).is_ok()
                            && line.ends_with("ping\n")
                    }
                    None => false,
                };
                if ok {
                    persist_ok += 1;
                } else {
                    persist_failed += 1;
                    *h = None;
                }
            }
        }
    }
    println!(
        "new_ok={new_ok} new_failed={new_failed} persist_ok={persist_ok} persist_failed={persist_failed}"
    );
}

fn hold(to: SocketAddr) {
    let (name, s) = match connect_once(to) {
        Ok(v) => v,
        Err(e) => {
            println!("{e}");
            return;
        }
    };
    println!("{name}");
    let _ = std::io::stdout().flush();
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut w = s;
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { break };
        let mut reply = String::new();
        if writeln!(w, "{line}").is_err() || r.read_line(&mut reply).is_err() || reply.is_empty() {
            println!("BROKEN");
        } else {
            print!("{reply}");
        }
        let _ = std::io::stdout().flush();
    }
}

fn targets(file: &str) -> Vec<SocketAddr> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| {
        eprintln!("reading {file}: {e}");
        std::process::exit(2)
    });
    let t: Vec<SocketAddr> = text.lines().filter(|l| !l.is_empty()).map(addr).collect();
    if t.is_empty() {
        usage()
    }
    t
}

fn sink(port: u16) {
    let l = TcpListener::bind(("0.0.0.0", port)).expect("bind tcp");
    eprintln!("serving sink on {port}");
    for c in l.incoming().flatten() {
        std::thread::spawn(move || {
            let mut c = c;
            let _ = std::io::copy(&mut c, &mut std::io::sink());
        });
    }
}

/// Bulk transfer over one connection: what a path costs per byte.
fn stream(to: SocketAddr, secs: u64) {
    let mut s = match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("connect: {e}");
            println!("bytes=0");
            return;
        }
    };
    let buf = vec![0x5au8; 128 << 10];
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut bytes = 0u64;
    while Instant::now() < deadline {
        match s.write(&buf) {
            Ok(n) => bytes += n as u64,
            Err(e) => {
                eprintln!("write: {e}");
                break;
            }
        }
    }
    println!("bytes={bytes}");
}

/// Request/response over persistent connections: the per-packet cost of a
/// path, with connection setup excluded.
fn rr(targets: &[SocketAddr], conns: u64, secs: u64) {
    // Connect everything first: setup (and a retransmitted SYN) must not
    // eat into the measured window.
    let mut streams = Vec::new();
    for i in 0..conns as usize {
        match connect_once(targets[i % targets.len()]) {
            Ok((_, s)) => streams.push(s),
            Err(e) => {
                eprintln!("connect: {e}");
                println!("requests=0 errors={conns}");
                return;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> = streams
        .into_iter()
        .map(|s| {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                let mut w = s;
                let (mut ok, mut line) = (0u64, String::new());
                while Instant::now() < deadline {
                    line.clear();
                    if w.write_all(b"x\n").is_err() || r.read_line(&mut line).unwrap_or(0) == 0 {
                        return (ok, 1);
                    }
                    ok += 1;
                }
                (ok, 0)
            })
        })
        .collect();
    let (mut ok, mut errors) = (0, 0);
    for w in workers {
        let (o, e) = w.join().unwrap_or((0, 1));
        ok += o;
        errors += e;
    }
    println!("requests={ok} errors={errors}");
}

/// Request/response on two sets of persistent connections, A from this
/// netns and B from netns `netns_b`, driven in alternating slices within one
/// process: the two paths share every condition (CPU steal, frequency,
/// the backends' load) except the path itself, which 2-second rounds run
/// one after the other cannot promise on a shared VM. The slice order is
/// A B B A, so a steady drift cancels. A connection's rate also depends on
/// where its threads happen to be scheduled, so both sets reconnect every
/// `EPOCH_SLICES` slices (setup is never timed). Only requests that start
/// and end inside their own set's slice count.
fn rr_pair(
    a: &[SocketAddr],
    b: &[SocketAddr],
    netns_b: &str,
    conns: u64,
    secs: u64,
    slice_ms: u64,
) {
    const EPOCH_SLICES: u64 = 8;
    let slice = Duration::from_millis(slice_ms.max(1));
    let total_slices = (2 * secs * 1000).div_ceil(slice_ms.max(1)).max(2);
    let (mut counts, mut spent, mut errors) = ([0u64; 2], [Duration::ZERO; 2], 0u64);
    let mut done = 0;
    while done < total_slices {
        let n = EPOCH_SLICES.min(total_slices - done);
        match rr_pair_epoch(a, b, netns_b, conns, slice, done, n) {
            Ok((c, t, e)) => {
                for i in 0..2 {
                    counts[i] += c[i];
                    spent[i] += t[i];
                }
                errors += e;
            }
            Err(e) => {
                eprintln!("connect: {e}");
                errors += 2 * conns;
            }
        }
        done += n;
    }
    println!(
        "a_requests={} a_secs={:.4} b_requests={} b_secs={:.4} errors={errors}",
        counts[0],
        spent[0].as_secs_f64(),
        counts[1],
        spent[1].as_secs_f64(),
    );
}

/// One epoch of [`rr_pair`]: fresh connections, slices `first..first + n`
/// of the A B B A order. Returns requests and time per set, and errors.
fn rr_pair_epoch(
    a: &[SocketAddr],
    b: &[SocketAddr],
    netns_b: &str,
    conns: u64,
    slice: Duration,
    first: u64,
    n: u64,
) -> Result<([u64; 2], [Duration; 2], u64), String> {
    use std::sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    };
    let connect_all = |targets: &[SocketAddr], offset: usize| -> Result<Vec<TcpStream>, String> {
        (0..conns as usize)
            .map(|i| connect_once(targets[(offset + i) % targets.len()]).map(|(_, s)| s))
            .collect()
    };
    // Walk the target lists across epochs, so every target gets its turn.
    let offset = (first as usize) * conns as usize;
    let a_streams = connect_all(a, offset)?;
    // A socket stays in the netns it was created in: create B's from a
    // thread that entered NETNS_B (setns changes only the calling thread).
    let path = format!("/run/netns/{netns_b}");
    let b_streams = std::thread::scope(|sc| {
        sc.spawn(|| -> Result<Vec<TcpStream>, String> {
            use std::os::fd::AsRawFd as _;
            let f = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            // SAFETY: a valid netns fd; affects only this thread.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
            }
            connect_all(b, offset)
        })
        .join()
        .unwrap_or_else(|_| Err("connect thread panicked".into()))
    })?;
    const STOP: u8 = 2;
    // The set allowed to send (0 = A, 1 = B, STOP); the mutex + condvar park
    // the other set's threads so they take no CPU from the measured one.
    let phase = Arc::new((AtomicU8::new(STOP + 1), Mutex::new(()), Condvar::new()));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let errors = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = a_streams
        .into_iter()
        .map(|s| (0u8, s))
        .chain(b_streams.into_iter().map(|s| (1u8, s)))
        .map(|(set, s)| {
            let (phase, counts, errors) = (phase.clone(), counts.clone(), errors.clone());
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                let mut w = s;
                let mut line = String::new();
                loop {
                    let p = phase.0.load(Ordering::Acquire);
                    if p == STOP {
                        return;
                    }
                    if p != set {
                        let guard = phase.1.lock().unwrap_or_else(|e| e.into_inner());
                        let _unused = phase
                            .2
                            .wait_while(guard, |_| {
                                let p = phase.0.load(Ordering::Acquire);
                                p != set && p != STOP
                            })
                            .unwrap_or_else(|e| e.into_inner());
                        continue;
                    }
                    line.clear();
                    if w.write_all(b"x\n").is_err() || r.read_line(&mut line).unwrap_or(0) == 0 {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    if phase.0.load(Ordering::Acquire) == set {
                        counts[set as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let switch = |to: u8| {
        let _g = phase.1.lock().unwrap_or_else(|e| e.into_inner());
        phase.0.store(to, Ordering::Release);
        phase.2.notify_all();
    };
    let mut spent = [Duration::ZERO; 2];
    for i in first..first + n {
        // A B B A A B B A ...
        let set = (i.div_ceil(2) % 2) as u8;
        switch(set);
        let t0 = Instant::now();
        std::thread::sleep(slice);
        spent[set as usize] += t0.elapsed();
    }
    switch(STOP);
    for w in workers {
        let _ = w.join();
    }
    Ok((
        [
            counts[0].load(Ordering::Relaxed),
            counts[1].load(Ordering::Relaxed),
        ],
        spent,
        errors.load(Ordering::Relaxed),
    ))
}

/// New connections back to back: connect (timed), read the server's
/// greeting (the response), close. This is where per-connection service
/// translation costs show, and where a linear rule chain hurts.
fn crr(targets: &[SocketAddr], conns: u64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> = (0..conns as usize)
        .map(|i| {
            let targets = targets.to_vec();
            std::thread::spawn(move || {
                let mut lat_us: Vec<u32> = Vec::with_capacity(1 << 16);
                let (mut errors, mut k) = (0u64, i * 7919);
                let mut line = String::new();
                while Instant::now() < deadline {
                    let to = targets[k % targets.len()];
                    k += 1;
                    let t0 = Instant::now();
                    let s = match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
                        Ok(s) => s,
                        Err(e) => {
                            errors += 1;
                            if errors <= 3 {
                                eprintln!("connect {to}: {e}");
                            }
                            continue;
                        }
                    };
                    let connect = t0.elapsed();
                    s.set_read_timeout(Some(Duration::from_secs(3))).ok();
                    line.clear();
                    if let Ok(0) | Err(_) = BufReader::new(&s).read_line(&mut line).map_err(|e| {
                        if errors < 3 {
                            eprintln!("read {to}: {e}");
                        }
                    }) {
                        if errors < 3 {
                            eprintln!("no greeting from {to} via {:?}", s.local_addr());
                        }
                        errors += 1;
                        continue;
                    }
                    lat_us.push(connect.as_micros().min(u32::MAX as u128) as u32);
                }
                (lat_us, errors)
            })
        })
        .collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for w in workers {
        let (l, e) = w.join().unwrap_or((Vec::new(), 1));
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    let pct = |p: f64| -> u32 {
        if lat.is_empty() {
            return 0;
        }
        lat[((lat.len() - 1) as f64 * p).round() as usize]
    };
    println!(
        "conns={} errors={errors} connect_p50_us={} connect_p99_us={}",
        lat.len(),
        pct(0.50),
        pct(0.99)
    );
}

/// A TCP connection from a fixed local port (SO_REUSEADDR, so two sockets
/// may share it towards different destinations, as the kernel's own port
/// choice does under pressure).
fn connect_from(port: u16, to: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    let SocketAddr::V4(to) = to else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket syscalls on an fd we own; it is closed on every
    // error path or handed to TcpStream, which closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        let local = sin(std::net::Ipv4Addr::UNSPECIFIED, port);
        let remote = sin(*to.ip(), to.port());
        // SO_SNDTIMEO also bounds connect() on Linux.
        let timeout = libc::timeval {
            tv_sec: 3,
            tv_usec: 0,
        };
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
            || libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            ) != 0
            || libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0
            || libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(stream)
    }
}

/// `hold_a`: B is dialled while A is open (two live flows on one port);
/// otherwise A is done and closed first (a port reused after a close).
fn same_port(a: SocketAddr, b: SocketAddr, port: u16, count: u16, hold_a: bool) {
    let greet = |s: &TcpStream| -> String {
        let mut line = String::new();
        match BufReader::new(s).read_line(&mut line) {
            Ok(n) if n > 0 => line.trim().to_string(),
            _ => "NOREPLY".into(),
        }
    };
    let ping = |s: &mut TcpStream| -> &'static str {
        let mut line = String::new();
        let ok = s.write_all(b"ping\n").is_ok()
            && BufReader::new(&*s).read_line(&mut line).is_ok()
            && line.ends_with("ping\n");
        if ok { "ok" } else { "BROKEN" }
    };
    for i in 0..count {
        let p = port + i;
        if !hold_a {
            let (na, pa) = match connect_from(p, a) {
                Ok(mut sa) => (greet(&sa), ping(&mut sa)),
                Err(e) => {
                    println!("ERROR {e:?}");
                    continue;
                }
            };
            // Closed; give the FIN exchange time to finish.
            std::thread::sleep(Duration::from_millis(50));
            let (nb, pb) = match connect_from(p, b) {
                Ok(mut sb) => (greet(&sb), ping(&mut sb)),
                Err(e) => (format!("ERROR_{:?}", e.kind()), "BROKEN"),
            };
            println!("{na} {nb} {pa} {pb}");
            continue;
        }
        let (mut sa, mut sb) = match (connect_from(p, a), connect_from(p, b)) {
            (Ok(x), Ok(y)) => (x, y),
            (x, y) => {
                println!("ERROR {:?} {:?}", x.err(), y.err());
                continue;
            }
        };
        let (na, nb) = (greet(&sa), greet(&sb));
        let (pa, pb) = (ping(&mut sa), ping(&mut sb));
        println!("{na} {nb} {pa} {pb}");
    }
}
