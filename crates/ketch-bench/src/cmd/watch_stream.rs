//! One Watch stream over raw gRPC, for `watch` and `watch-latency`.
//!
//! The call opens with its first request: etcd sends the response headers
//! only with its first answer, and tonic's call resolves on the headers.

use anyhow::{Context, Result, anyhow, bail};
use ketch_proto::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_client::WatchClient, watch_request::RequestUnion,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::conn::status_text;

/// Requests queued on one stream before `send` waits.
const REQUEST_QUEUE: usize = 16;

/// A Watch stream on one connection.
pub struct WatchStream {
    client: WatchClient<Channel>,
    sender: mpsc::Sender<WatchRequest>,
    /// Until the call is open: the other end of `sender`.
    requests: Option<mpsc::Receiver<WatchRequest>>,
    answers: Option<Streaming<WatchResponse>>,
}

impl WatchStream {
    /// A stream on `channel`, opened by the first request.
    pub fn new(channel: Channel) -> WatchStream {
        let (sender, requests) = mpsc::channel(REQUEST_QUEUE);
        WatchStream { client: WatchClient::new(channel), sender, requests: Some(requests), answers: None }
    }

    /// Sends `request`, opening the call first if needed.
    pub async fn send(&mut self, request: WatchRequest) -> Result<()> {
        self.sender.send(request).await.map_err(|_| anyhow!("watch stream closed"))?;
        if let Some(requests) = self.requests.take() {
            let answers = self
                .client
                .watch(ReceiverStream::new(requests))
                .await
                .map_err(|s| anyhow!("Failed to create watch stream: {}", status_text(&s)))?;
            self.answers = Some(answers.into_inner());
        }
        Ok(())
    }

    /// The next answer; the end of the stream is an error.
    pub async fn next(&mut self) -> Result<WatchResponse> {
        let answers = self.answers.as_mut().context("watch stream not open")?;
        match answers.message().await {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => bail!("watch stream ended"),
            Err(s) => bail!("{}", status_text(&s)),
        }
    }

    /// Creates a watcher on `key` and waits until the server confirms it;
    /// returns its watch ID.
    pub async fn create(&mut self, key: Vec<u8>, prev_kv: bool) -> Result<i64> {
        let create = WatchCreateRequest { key, prev_kv, ..Default::default() };
        self.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await?;
        loop {
            let answer = self.next().await?;
            if answer.canceled {
                bail!("watch canceled: {}", answer.cancel_reason);
            }
            if answer.created {
                return Ok(answer.watch_id);
            }
        }
    }
}
