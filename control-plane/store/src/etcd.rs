//! The etcd backend: every [`Store`] call is one etcd request (writes are
//! single transactions with a compare on `create_revision`/`mod_revision`,
//! exactly as the Kubernetes API server's etcd3 storage does them).
//!
//! Watches reconnect on their own: when the stream breaks (member down,
//! network), a new watch resumes after the last revision delivered, so the
//! consumer sees no gap and no duplicate. Progress is requested from etcd
//! every `progress_interval` (etcd's own notify interval is 10 minutes).
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, TxnOp,
    TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use crate::{
    KeyValue, ListRequest, ListResult, Store, StoreError, WatchEvent, WatchStream, prefix_end,
    validate_key, validate_write,
};

pub use etcd_client::{Certificate, TlsOptions};

#[derive(Clone, Debug)]
pub struct Options {
    pub prefix: String,
    pub tls: Option<TlsOptions>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub progress_interval: Duration,
    /// Events buffered per watcher before it is cut off as too slow.
    pub watcher_buffer: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            prefix: "/registry/".into(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            progress_interval: Duration::from_secs(1),
            watcher_buffer: 1024,
        }
    }
}

pub struct Etcd {
    client: Client,
    /// For lists: the gRPC default of 4 MiB per response is far below a
    /// list of 10 000 pods (the apiserver lifts it the same way).
    lists: etcd_client::KvClient,
    opts: Options,
}

/// The request never reached a member (connection refused or reset while
/// connecting): safe to send again, to whichever member the client's
/// balancer picks next. Anything else may have been applied.
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable && s.message().contains("connect")
        }
        _ => false,
    }
}

/// Runs `f` until it gets an answer from a member: a dead member in the
/// endpoint list costs a retry, not a failed request (as etcd's Go client
/// fails over). Gives up after ~3 s of nothing but connection errors.
async fn failover<T, F, Fut>(mut f: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut delay = Duration::from_millis(25);
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if attempt < 8 && never_sent(&e) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(800));
                attempt += 1;
            }
            r => return r,
        }
    }
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn kv(k: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: k
            .key_str()
            .map_err(|e| StoreError::Backend(format!("non-UTF-8 key: {e}")))?
            .to_string(),
        value: k.value().to_vec(),
        create_revision: k.create_revision(),
        mod_revision: k.mod_revision(),
        version: k.version(),
    })
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map(|h| h.revision()).unwrap_or(0)
}

impl Etcd {
    /// Connects to the cluster (any reachable member serves; the client
    /// balances over all of them).
    pub async fn connect(endpoints: &[String], opts: Options) -> Result<Self, StoreError> {
        let mut co = ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            .with_timeout(opts.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some(tls) = &opts.tls {
            co = co.with_tls(tls.clone());
        }
        let client = Client::connect(endpoints, Some(co))
            .await
            .map_err(unavailable)?;
        let lists = client
            .kv_client()
            .max_decoding_message_size(i32::MAX as usize);
        Ok(Self {
            client,
            lists,
            opts,
        })
    }

    /// Maps a range/compaction failure to the precise error.
    async fn range_error(&self, e: etcd_client::Error, requested: i64) -> StoreError {
        let msg = e.to_string();
        if msg.contains("required revision has been compacted") {
            let compacted = self.compacted_revision().await.unwrap_or(0);
            StoreError::Compacted {
                requested,
                compacted,
            }
        } else if msg.contains("future revision") {
            let current = self.current_revision().await.unwrap_or(0);
            StoreError::FutureRevision { requested, current }
        } else {
            unavailable(e)
        }
    }

    async fn txn(&self, txn: etcd_client::Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        failover(|| {
            let (mut c, t) = (self.client.clone(), txn.clone());
            async move { c.txn(t).await }
        })
        .await
        .map_err(unavailable)
    }

    /// The losing side of a compare-and-swap: what the key holds now.
    fn current_of(resp: &etcd_client::TxnResponse) -> Result<Option<KeyValue>, StoreError> {
        for r in resp.op_responses() {
            if let TxnOpResponse::Get(g) = r {
                return g.kvs().first().map(kv).transpose();
            }
        }
        Ok(None)
    }
}

#[async_trait::async_trait]
impl Store for Etcd {
    async fn current_revision(&self) -> Result<i64, StoreError> {
        // A one-key range with count-only is the cheapest revision read.
        let r = failover(|| {
            let mut c = self.client.clone();
            let key = self.opts.prefix.clone();
            async move { c.get(key, Some(GetOptions::new().with_count_only())).await }
        })
        .await
        .map_err(unavailable)?;
        Ok(header_rev(r.header()))
    }

    async fn compacted_revision(&self) -> Result<i64, StoreError> {
        // etcd reports its compaction point to a watch that starts too early.
        let mut w = self
            .client
            .clone()
            .watch(
                self.opts.prefix.as_str(),
                Some(WatchOptions::new().with_start_revision(1)),
            )
            .await
            .map_err(unavailable)?;
        // etcd answers "created" first and, when the start is compacted,
        // cancels right after with the compaction point; silence after
        // "created" means nothing is compacted.
        let mut created = false;
        loop {
            let wait = if created {
                Duration::from_millis(300)
            } else {
                self.opts.request_timeout
            };
            match tokio::time::timeout(wait, w.message()).await {
                Ok(Ok(Some(resp))) => {
                    if resp.compact_revision() > 0 {
                        return Ok(resp.compact_revision());
                    }
                    created |= resp.created();
                }
                Ok(Ok(None)) => return Ok(0),
                Ok(Err(e)) => return Err(unavailable(e)),
                Err(_) if created => return Ok(0),
                Err(_) => return Err(StoreError::Unavailable("etcd watch: no answer".into())),
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        validate_key(&self.opts.prefix, key)?;
        let r = failover(|| {
            let mut c = self.client.clone();
            let key = key.to_string();
            async move { c.get(key, None).await }
        })
        .await
        .map_err(unavailable)?;
        r.kvs().first().map(kv).transpose()
    }

    async fn list(&self, req: ListRequest<'_>) -> Result<ListResult, StoreError> {
        validate_key(&self.opts.prefix, req.prefix)?;
        let start = req.start.unwrap_or(req.prefix);
        validate_key(req.prefix, start)?;
        let mut o = GetOptions::new();
        o = match prefix_end(req.prefix) {
            Some(end) => o.with_range(end),
            None => o.with_from_key(),
        };
        if req.limit > 0 {
            o = o.with_limit(req.limit as i64);
        }
        if let Some(rev) = req.revision {
            o = o.with_revision(rev);
        }
        let r = match failover(|| {
            let (mut c, o) = (self.lists.clone(), o.clone());
            let start = start.to_string();
            async move { c.get(start, Some(o)).await }
        })
        .await
        {
            Ok(r) => r,
            Err(e) => return Err(self.range_error(e, req.revision.unwrap_or(0)).await),
        };
        Ok(ListResult {
            kvs: r.kvs().iter().map(kv).collect::<Result<_, _>>()?,
            revision: req.revision.unwrap_or_else(|| header_rev(r.header())),
            more: r.more(),
        })
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        validate_write(&self.opts.prefix, key, &value)?;
        let txn = etcd_client::Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        let r = self.txn(txn).await?;
        if r.succeeded() {
            Ok(header_rev(r.header()))
        } else {
            Err(StoreError::AlreadyExists(key.to_string()))
        }
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64, StoreError> {
        validate_write(&self.opts.prefix, key, &value)?;
        let txn = etcd_client::Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, None)])
            .or_else([TxnOp::get(key, None)]);
        let r = self.txn(txn).await?;
        if r.succeeded() {
            return Ok(header_rev(r.header()));
        }
        match Self::current_of(&r)? {
            None => Err(StoreError::NotFound(key.to_string())),
            Some(cur) => Err(StoreError::Conflict {
                key: key.to_string(),
                expected,
                current: Some(Box::new(cur)),
            }),
        }
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<i64>,
    ) -> Result<(i64, KeyValue), StoreError> {
        validate_key(&self.opts.prefix, key)?;
        let cmp = match expected {
            Some(e) => Compare::mod_revision(key, CompareOp::Equal, e),
            None => Compare::create_revision(key, CompareOp::Greater, 0),
        };
        let txn = etcd_client::Txn::new()
            .when([cmp])
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let r = self.txn(txn).await?;
        if r.succeeded() {
            for op in r.op_responses() {
                if let TxnOpResponse::Delete(d) = op
                    && let Some(prev) = d.prev_kvs().first()
                {
                    return Ok((header_rev(r.header()), kv(prev)?));
                }
            }
            return Err(StoreError::NotFound(key.to_string()));
        }
        match (Self::current_of(&r)?, expected) {
            (None, _) => Err(StoreError::NotFound(key.to_string())),
            (Some(cur), Some(e)) => Err(StoreError::Conflict {
                key: key.to_string(),
                expected: e,
                current: Some(Box::new(cur)),
            }),
            (Some(_), None) => Err(StoreError::Backend(format!(
                "delete of {key} failed its existence check yet it exists"
            ))),
        }
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        match failover(|| {
            let mut c = self.client.clone();
            async move { c.compact(revision, None).await }
        })
        .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.range_error(e, revision).await),
        }
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream, StoreError> {
        validate_key(&self.opts.prefix, prefix)?;
        // A compacted start shows up as the stream's first item.
        let (tx, rx) = mpsc::channel(self.opts.watcher_buffer.max(1));
        tokio::spawn(watch_loop(
            self.client.clone(),
            prefix.to_string(),
            after,
            self.opts.progress_interval,
            tx,
        ));
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

type Tx = mpsc::Sender<Result<WatchEvent, StoreError>>;

/// Sends `ev`; false when the consumer is gone. A full buffer means the
/// consumer is too slow: it gets the error (once there is room) and the
/// watch ends.
async fn deliver(tx: &Tx, ev: WatchEvent) -> Result<bool, ()> {
    match tx.try_send(Ok(ev)) {
        Ok(()) => Ok(true),
        Err(mpsc::error::TrySendError::Closed(_)) => Ok(false),
        Err(mpsc::error::TrySendError::Full(_)) => {
            let _ = tx.send(Err(StoreError::WatcherTooSlow)).await;
            Err(())
        }
    }
}

async fn watch_loop(mut client: Client, prefix: String, after: i64, every: Duration, tx: Tx) {
    let mut last = after;
    let mut backoff = Duration::from_millis(100);
    'reconnect: while !tx.is_closed() {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(last + 1)
            .with_prev_key();
        let stream = match client.watch(prefix.as_str(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("etcd watch {prefix}: {e}; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let (mut sender, mut responses) = stream.split();
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            let resp = tokio::select! {
                r = responses.message() => r,
                _ = tick.tick() => {
                    if sender.request_progress().await.is_err() {
                        continue 'reconnect;
                    }
                    continue;
                }
                _ = tx.closed() => return,
            };
            let resp = match resp {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => {
                    tokio::time::sleep(backoff).await;
                    continue 'reconnect;
                }
            };
            backoff = Duration::from_millis(100);
            if resp.compact_revision() > 0 {
                let _ = tx
                    .send(Err(StoreError::Compacted {
                        requested: last,
                        compacted: resp.compact_revision(),
                    }))
                    .await;
                return;
            }
            if resp.canceled() {
                tracing::debug!("etcd watch {prefix} canceled: {}", resp.cancel_reason());
                continue 'reconnect;
            }
            if resp.created() && resp.events().is_empty() {
                continue;
            }
            if resp.events().is_empty() {
                let revision = header_rev(resp.header());
                if revision >= last {
                    last = revision;
                    match deliver(&tx, WatchEvent::Progress { revision }).await {
                        Ok(true) => {}
                        _ => return,
                    }
                }
                continue;
            }
            for ev in resp.events() {
                let Some(k) = ev.kv() else { continue };
                let rev = k.mod_revision();
                if rev <= last {
                    continue;
                }
                let mapped = match (ev.event_type(), kv(k)) {
                    (EventType::Put, Ok(cur)) => WatchEvent::Put {
                        kv: cur,
                        prev: ev.prev_kv().map(kv).transpose().ok().flatten(),
                    },
                    (EventType::Delete, Ok(cur)) => WatchEvent::Delete {
                        revision: rev,
                        prev: ev
                            .prev_kv()
                            .map(kv)
                            .transpose()
                            .ok()
                            .flatten()
                            .unwrap_or(cur),
                    },
                    (_, Err(e)) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                last = rev;
                match deliver(&tx, mapped).await {
                    Ok(true) => {}
                    _ => return,
                }
            }
        }
    }
}
