//! `sluice-store-writer PATH`: writes keys to the embedded store at PATH
//! as fast as it can from 4 concurrent tasks, printing `acked KEY REV` (and
//! flushing) only after each write returned. The crash-safety test SIGKILLs
//! it mid-stream and checks that every acknowledged key survived.
use std::{io::Write as _, sync::Arc};

use sluice_store::{Store, embedded};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: sluice-store-writer PATH");
        std::process::exit(2);
    };
    let store = match embedded::Embedded::open(path.as_ref(), embedded::Options::default()) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("sluice-store-writer: {e}");
            std::process::exit(1);
        }
    };
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (store, out) = (store.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let key = format!("/registry/crash/{t}-{i:08}");
                match store.create(&key, vec![b'v'; 256]).await {
                    Ok(rev) => {
                        let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = writeln!(o, "acked {key} {rev}");
                        let _ = o.flush();
                    }
                    Err(e) => {
                        eprintln!("write {key}: {e}");
                        return;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
