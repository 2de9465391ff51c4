//! A settlement leaves its account as soon as it is sent, and the account's
//! next append is chained behind it (`Nats-Expected-Last-Msg-Id`) instead
//! of waiting for its acknowledgement. What makes that safe is checked on
//! a real nats-server first, then the gate's use of it, refusals included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use async_nats::jetstream::context::{Publish, PublishErrorKind};
use chrono::{DateTime, Utc};
use projector::LimitView;
use rust_decimal::Decimal;
use schemas::plan::Tier;
use schemas::{subjects, Account, Amounts, ProjectId, Unit};
use support::{account, admit, gate, request, tier};
use testkit::nats::NatsServer;
use tollgate_ledger::gate::decide::ReserveRequest;
use tollgate_ledger::gate::{ReserveOutcome, CHAINS_REFUSED_LIMIT_PERCENT};
use tollgate_ledger::{Clock, Gate, ManualClock};

const PLAN: &str = "default_tier: free\ntiers:\n  free:\n    limits:\n      - { unit: requests, window: day, cap: 100 }\n      - { unit: usd, window: day, cap: \"1.00\" }\n";

fn usd(cents: i64) -> Amounts {
    Amounts::new()
        .with(Unit::Requests, Decimal::ONE)
        .with(Unit::Usd, Decimal::new(cents, 2))
}

/// One account on its own nats-server, with a dollar cap of 1.00.
struct Case {
    nats: NatsServer,
    clock: ManualClock,
    project: ProjectId,
    who: Account,
    tier: Tier,
    expires: DateTime<Utc>,
}

impl Case {
    async fn start() -> Case {
        let clock = ManualClock::new(Utc::now());
        let expires = clock.now() + chrono::Duration::minutes(5);
        Case {
            nats: NatsServer::start().await.unwrap(),
            clock,
            project: ProjectId::new(),
            who: account("user"),
            tier: tier(PLAN),
            expires,
        }
    }

    /// A gate, as one process would have.
    async fn gate(&self) -> Gate {
        gate(&self.nats, &self.clock, None).await
    }

    /// A hold of one request and `cents`.
    fn request(&self, cents: i64) -> ReserveRequest {
        request(self.expires, usd(cents))
    }

    /// The account's limits as `g` sees them, which a gate reading the
    /// stream afresh must see too.
    async fn views(&self, g: &Gate) -> Vec<LimitView> {
        let views = g.view(self.project, &self.who, &self.tier).await.unwrap();
        let cold = self.gate().await;
        let cold = cold.view(self.project, &self.who, &self.tier).await;
        assert_eq!(cold.unwrap(), views, "a cold gate disagrees");
        views
    }
}

/// Dollars used and held in `views` (the plan's second limit).
fn dollars(views: &[LimitView]) -> (Decimal, Decimal) {
    (views[1].used, views[1].held)
}

/// What the gate relies on: an append expecting event X as the stream's
/// last message lands only if X was stored and nothing at all after it,
/// even a message without an id, on any subject.
#[tokio::test]
async fn nats_server_takes_a_chained_append_only_right_behind_its_tail() {
    let nats = NatsServer::start().await.unwrap();
    let client = tollgate_ledger::stream::connect(&nats.url()).await.unwrap();
    let js = tollgate_ledger::stream::jetstream(client);
    tollgate_ledger::stream::ensure_ledger_stream(&js)
        .await
        .unwrap();
    let project = ProjectId::new();
    let (mine, other) = (
        subjects::account_subject(project, &account("mine")),
        subjects::account_subject(project, &account("other")),
    );
    let send = |subject: &String, publish: Publish| {
        let (js, subject) = (js.clone(), subject.clone());
        async move {
            js.send_publish(subject, publish.payload("{}".into()))
                .await
                .unwrap()
                .await
        }
    };

    // A tail, then an append chained behind it before its answer is read.
    let tail = send(
        &mine,
        Publish::build()
            .expected_last_subject_sequence(0)
            .message_id("tail-1"),
    );
    let chained = send(&mine, Publish::build().expected_last_message_id("tail-1"));
    let (tail, chained) = tokio::join!(tail, chained);
    let tail_seq = tail.unwrap().sequence;
    assert_eq!(chained.unwrap().sequence, tail_seq + 1);

    // A tail refused (stale subject sequence): what is chained behind it is refused too.
    let tail = send(
        &mine,
        Publish::build()
            .expected_last_subject_sequence(tail_seq)
            .message_id("tail-2"),
    );
    let chained = send(&mine, Publish::build().expected_last_message_id("tail-2"));
    let (tail, chained) = tokio::join!(tail, chained);
    assert_eq!(
        tail.unwrap_err().kind(),
        PublishErrorKind::WrongLastSequence
    );
    assert_eq!(
        chained.unwrap_err().kind(),
        PublishErrorKind::WrongLastMessageId
    );

    // A tail stored, then a message without an id on another subject:
    // the append chained behind the tail no longer follows it.
    send(
        &mine,
        Publish::build()
            .expected_last_subject_sequence(tail_seq + 1)
            .message_id("tail-3"),
    )
    .await
    .unwrap();
    send(&other, Publish::build()).await.unwrap();
    let refused = send(&mine, Publish::build().expected_last_message_id("tail-3")).await;
    assert_eq!(
        refused.unwrap_err().kind(),
        PublishErrorKind::WrongLastMessageId
    );
}

/// One task commits and, right behind it, another reserves on the same
/// account: the reserve is chained behind the commit, and both land once.
#[tokio::test]
async fn the_next_hold_is_chained_behind_a_settlement_in_flight() {
    let c = Case::start().await;
    let (project, who, tier) = (c.project, &c.who, &c.tier);
    let g = c.gate().await;
    let first = admit(&g, project, who, tier, c.request(50)).await;

    // 0.70 fits only once the commit has taken the 0.50 hold down to 0.20.
    let second = c.request(70);
    let second_id = second.reservation_id;
    // `join!` polls the commit until it waits for its answer, then the
    // reserve, on this one thread: the commit's answer cannot have been
    // read yet when the reserve decides.
    let (committed, reserved) = tokio::join!(
        g.commit(project, first.reservation_id, Some(who), usd(20), None),
        g.reserve(project, who, tier, second, None)
    );
    committed.unwrap();
    let ReserveOutcome::Admitted(admitted) = reserved.unwrap() else {
        panic!("the second hold fits: 0.20 used, 0.70 asked, 1.00 cap");
    };
    assert_eq!(admitted.reservation_id, second_id);
    assert_eq!(g.load_stats().appends_chained, 1, "the reserve was chained");

    // The hold saw the commit: 0.20 used and 0.70 held.
    let views = c.views(&g).await;
    assert_eq!(dollars(&views), (Decimal::new(20, 2), Decimal::new(70, 2)));
    // And a denial is decided on the same state: 0.90 of 1.00 is taken.
    let denied = g
        .reserve(project, who, tier, c.request(11), None)
        .await
        .unwrap();
    assert!(matches!(denied, ReserveOutcome::Denied(_)), "{denied:?}");
}

/// Another process appends to the account first, so this gate's commit is
/// decided on a stale view and refused, and the reserve chained behind it
/// with it: both are decided again on the account read back, and land once.
#[tokio::test]
async fn a_hold_chained_behind_a_refused_settlement_is_decided_again() {
    let c = Case::start().await;
    let (project, who, tier) = (c.project, &c.who, &c.tier);
    let (a, b) = (c.gate().await, c.gate().await);
    let first = admit(&a, project, who, tier, c.request(30)).await;
    // The other process takes 0.40 on the same account; `a` has not seen it.
    admit(&b, project, who, tier, c.request(40)).await;

    let (committed, reserved) = tokio::join!(
        a.commit(project, first.reservation_id, Some(who), usd(20), None),
        a.reserve(project, who, tier, c.request(50), None)
    );
    committed.unwrap();
    let reserved = reserved.unwrap();
    assert_eq!(a.load_stats().appends_chained, 1);
    assert_eq!(
        a.load_stats().chains_refused,
        0,
        "refused with its tail, not by an append in between"
    );
    // Decided again on the account read back (0.30 and 0.40 held, the
    // commit not landed yet), 0.50 is refused; on the stale view it fit.
    assert!(
        matches!(reserved, ReserveOutcome::Denied(_)),
        "{reserved:?}"
    );
    let views = c.views(&a).await;
    assert_eq!(
        (views[0].used, views[0].held),
        (Decimal::ONE, Decimal::ONE),
        "one request committed once, one held"
    );
    assert_eq!(dollars(&views), (Decimal::new(20, 2), Decimal::new(40, 2)));
}

/// A hold taken over another connection of the same process (another HTTP
/// thread) is not chained: nats-server orders only one connection's
/// appends, so it waits for the settlement's answer and decides after it.
#[tokio::test]
async fn another_connection_waits_for_the_settlement_instead() {
    let c = Case::start().await;
    let (project, who, tier) = (c.project, &c.who, &c.tier);
    let g = c.gate().await;
    let other_thread = g.on_this_thread(&c.nats.url()).await.unwrap();
    let first = admit(&g, project, who, tier, c.request(50)).await;
    let (committed, reserved) = tokio::join!(
        g.commit(project, first.reservation_id, Some(who), usd(20), None),
        other_thread.reserve(project, who, tier, c.request(70), None)
    );
    committed.unwrap();
    assert!(
        matches!(reserved.unwrap(), ReserveOutcome::Admitted(_)),
        "decided after the commit: 0.20 used, 0.70 asked"
    );
    assert_eq!(g.load_stats().appends_chained, 0);
    let views = c.views(&g).await;
    assert_eq!(dollars(&views), (Decimal::new(20, 2), Decimal::new(70, 2)));
}

/// The task that sent a settlement goes away before its answer (an HTTP
/// client hung up): the next task on the account takes the answer in.
#[tokio::test]
async fn a_settlement_whose_task_was_dropped_is_still_taken_in() {
    let c = Case::start().await;
    let (project, who, tier) = (c.project, &c.who, &c.tier);
    let g = c.gate().await;
    let first = admit(&g, project, who, tier, c.request(50)).await;
    {
        let mut commit =
            std::pin::pin!(g.commit(project, first.reservation_id, Some(who), usd(20), None));
        // Polled until it waits for its answer: sent, and the account free.
        assert!(futures::poll!(commit.as_mut()).is_pending());
    }
    let ReserveOutcome::Admitted(_) = g
        .reserve(project, who, tier, c.request(70), None)
        .await
        .unwrap()
    else {
        panic!("the commit landed: 0.20 used, 0.70 asked");
    };
    assert_eq!(
        g.load_stats().appends_chained,
        1,
        "chained behind the orphan"
    );
    let views = c.views(&g).await;
    assert_eq!(dollars(&views), (Decimal::new(20, 2), Decimal::new(70, 2)));
    // Nothing is left waiting on the account: an hour on, its hold past its
    // TTL, the idle sweep forgets it (an unanswered tail would keep it).
    c.clock.advance(chrono::Duration::hours(1));
    assert_eq!(g.forget_idle(chrono::Duration::minutes(1)), 1);
}

/// Queues an append to `subject` on `g`'s own connection, behind whatever
/// `g` has sent, without letting the runtime run in between (the
/// connection's task has not written anything yet). Its answer, to await.
async fn queue_append(
    g: &Gate,
    subject: &str,
) -> Result<
    async_nats::jetstream::context::PublishAckFuture,
    async_nats::jetstream::context::PublishError,
> {
    let publish = Publish::build().payload("{}".into());
    let mut sent = std::pin::pin!(g.jetstream().send_publish(subject.to_owned(), publish));
    match futures::poll!(sent.as_mut()) {
        std::task::Poll::Ready(sent) => sent,
        std::task::Poll::Pending => panic!("the other append was not queued behind the tail"),
    }
}

/// Another append reaches the stream between a settlement and the hold
/// chained behind it (here sent over the gate's own connection, so the
/// order is certain; another process's does the same): the hold is refused,
/// decided again and lands once. Refused often enough in a row (past
/// `CHAINS_REFUSED_LIMIT_PERCENT` on average), the gate stops sending
/// settlements as tails: the next hold waits for its settlement.
#[tokio::test]
async fn appends_in_between_turn_chaining_off() {
    let c = Case::start().await;
    let (project, who, tier) = (c.project, &c.who, &c.tier);
    let g = c.gate().await;
    let elsewhere = subjects::account_subject(project, &account("someone else"));
    let mut hold = admit(&g, project, who, tier, c.request(1)).await;
    let mut round = 0;
    while g.load_stats().chains_refused_lately < CHAINS_REFUSED_LIMIT_PERCENT {
        round += 1;
        assert!(round <= 100, "still chaining after 100 refusals");
        // On this test's one thread, nothing yields between the commit's
        // first poll and the hold's send: the tail, the other append and
        // the hold reach the connection in that order, and the tail's
        // answer cannot be read before the hold decides.
        let mut commit =
            std::pin::pin!(g.commit(project, hold.reservation_id, Some(who), usd(1), None));
        assert!(futures::poll!(commit.as_mut()).is_pending());
        let other = queue_append(&g, &elsewhere).await;
        // A commit that was not a tail would keep the account: time out
        // rather than hang.
        let next = admit(&g, project, who, tier, c.request(1));
        hold = tokio::time::timeout(std::time::Duration::from_secs(10), next)
            .await
            .expect("the commit kept the account: it was not sent as a tail");
        commit.await.unwrap();
        other.unwrap().await.unwrap();
        let stats = g.load_stats();
        assert_eq!(
            (stats.appends_chained, stats.chains_refused),
            (round, round),
            "round {round}: the hold was chained, refused and sent again"
        );
    }
    assert!(round > 1, "one refusal is not enough to stop chaining");

    let (committed, reserved) = tokio::join!(
        g.commit(project, hold.reservation_id, Some(who), usd(1), None),
        g.reserve(project, who, tier, c.request(1), None)
    );
    committed.unwrap();
    assert!(matches!(reserved.unwrap(), ReserveOutcome::Admitted(_)));
    assert_eq!(
        g.load_stats().appends_chained,
        round,
        "the settlement was not a tail: nothing was chained behind it"
    );
    // A commit of 0.01 per round and the last, and one hold of 0.01, each once.
    let views = c.views(&g).await;
    let commits = Decimal::from(round + 1);
    assert_eq!(
        dollars(&views),
        (commits / Decimal::from(100), Decimal::new(1, 2))
    );
    assert_eq!((views[0].used, views[0].held), (commits, Decimal::ONE));
}

/// A settlement chained behind another one (its task gone after sending,
/// so nothing of this process is in flight) is itself sent as a tail; an
/// append in between refuses it, which counts as such, and it is decided
/// again and lands once.
#[tokio::test]
async fn a_settlement_chained_behind_a_settlement_counts_its_refusal() {
    let c = Case::start().await;
    let (project, who, tier) = (c.project, &c.who, &c.tier);
    let g = c.gate().await;
    let elsewhere = subjects::account_subject(project, &account("someone else"));
    let first = admit(&g, project, who, tier, c.request(30)).await;
    let second = admit(&g, project, who, tier, c.request(30)).await;
    {
        // Sent as a tail, then its task is dropped (the order as above).
        let mut commit =
            std::pin::pin!(g.commit(project, first.reservation_id, Some(who), usd(10), None));
        assert!(futures::poll!(commit.as_mut()).is_pending());
    }
    let other = queue_append(&g, &elsewhere).await;
    let commit = g.commit(project, second.reservation_id, Some(who), usd(20), None);
    tokio::time::timeout(std::time::Duration::from_secs(10), commit)
        .await
        .expect("the account was kept")
        .unwrap();
    other.unwrap().await.unwrap();
    let stats = g.load_stats();
    assert_eq!((stats.appends_chained, stats.chains_refused), (1, 1));
    let views = c.views(&g).await;
    assert_eq!(dollars(&views), (Decimal::new(30, 2), Decimal::ZERO));
    assert_eq!(
        (views[0].used, views[0].held),
        (Decimal::from(2), Decimal::ZERO)
    );
}
