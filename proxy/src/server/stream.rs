//! A streamed answer, metered: upstream SSE bytes go through the provider's
//! [`StreamTranslator`] to the client, and the hold is committed with the
//! usage when the stream ends — or, if the client goes away first, with what
//! was consumed so far (dropping this stream also drops the upstream
//! connection, aborting the call). Never $0 for work that happened. A stream
//! still running when the proxy's shutdown grace runs out ends there and is
//! committed with what was consumed, while its thread can still record it.

use crate::estimate::{actual, CountedInput};
use crate::hold::Hold;
use crate::pricing::ModelPrice;
use crate::providers::StreamTranslator;
use bytes::Bytes;
use futures::Stream;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

type Upstream = Pin<Box<dyn Stream<Item = Result<Bytes, hyper::Error>> + Send>>;

pub struct MeteredStream {
    upstream: Upstream,
    translator: StreamTranslator,
    hold: Option<Hold>,
    price: Option<ModelPrice>,
    /// Our own prompt count, for streams cut before the provider reported usage.
    input_estimate: CountedInput,
    /// Ready when the stream must end now (shutdown).
    cut_off: Pin<Box<WaitForCancellationFutureOwned>>,
    done: bool,
}

impl MeteredStream {
    pub fn new(
        upstream: impl Stream<Item = Result<Bytes, hyper::Error>> + Send + 'static,
        translator: StreamTranslator,
        hold: Hold,
        price: Option<ModelPrice>,
        input_estimate: CountedInput,
        cut_off: CancellationToken,
    ) -> Self {
        MeteredStream {
            upstream: Box::pin(upstream),
            translator,
            hold: Some(hold),
            price,
            input_estimate,
            cut_off: Box::pin(cut_off.cancelled_owned()),
            done: false,
        }
    }

    fn settle(&mut self) {
        let Some(hold) = self.hold.take() else { return };
        let mut usage = self.translator.usage_so_far();
        self.input_estimate.fill_missing(&mut usage);
        if self.translator.upstream_failed() && usage.output_tokens == 0 {
            hold.release("upstream_error");
            return;
        }
        if usage.estimated {
            tracing::info!(reservation_id = %hold.reservation_id(), output_tokens = usage.output_tokens, "stream ended early; committing what was consumed");
        }
        hold.commit(actual(&usage, self.price.as_ref()));
    }

    fn finish(&mut self) -> Option<Bytes> {
        self.done = true;
        let tail = self.translator.finish();
        self.settle();
        (!tail.is_empty()).then_some(tail)
    }
}

impl Stream for MeteredStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.cut_off.as_mut().poll(cx).is_ready() {
                tracing::warn!(
                    "shutting down: a stream still running ends here, charged what it consumed"
                );
                if let Some(tail) = this.finish() {
                    return Poll::Ready(Some(Ok(tail)));
                }
                continue;
            }
            match this.upstream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let out = this.translator.push(&chunk);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream stream broke");
                    if let Some(tail) = this.finish() {
                        return Poll::Ready(Some(Ok(tail)));
                    }
                }
                Poll::Ready(None) => {
                    if let Some(tail) = this.finish() {
                        return Poll::Ready(Some(Ok(tail)));
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for MeteredStream {
    fn drop(&mut self) {
        // The client went away mid-stream: commit what was consumed.
        self.settle();
    }
}
