//! An in-process `Broker` for tests of the engines' broker paths: FIFO queues of hints, manual
//! settling, and a way to lose a consumer the way a crashed worker loses its connection.
//!
//! Invariant: like RabbitMQ, a delivery is removed only when acknowledged; an unsettled delivery
//! goes back to the head of its queue when its consumer is lost ([`MemoryBroker::lose_consumers`])
//! or when it is requeued.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use idem_core::broker::{Acker, Broker, BrokerError, Consumer, Delivery, Hint};
use idem_core::QueueName;
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    queues: HashMap<String, VecDeque<Hint>>,
    /// Delivered, not yet settled: (delivery tag, hint).
    unsettled: Vec<(u64, Hint)>,
    next_tag: u64,
    published: u64,
}

/// The broker; cheap to clone.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    state: Arc<Mutex<State>>,
    ready: Arc<Notify>,
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every unsettled delivery goes back to its queue, as when a worker's connection drops.
    pub fn lose_consumers(&self) {
        let mut st = self.state.lock().unwrap();
        let back: Vec<Hint> = st.unsettled.drain(..).map(|(_, h)| h).collect();
        for h in back.into_iter().rev() {
            st.queues
                .entry(h.queue.to_string())
                .or_default()
                .push_front(h);
        }
        drop(st);
        self.ready.notify_waiters();
    }

    /// How many hints were published in all.
    pub fn published(&self) -> u64 {
        self.state.lock().unwrap().published
    }

    /// Hints waiting in queues plus those delivered and not settled.
    pub fn outstanding(&self) -> usize {
        let st = self.state.lock().unwrap();
        st.queues.values().map(VecDeque::len).sum::<usize>() + st.unsettled.len()
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, hints: &[Hint]) -> Result<(), BrokerError> {
        let mut st = self.state.lock().unwrap();
        for h in hints {
            st.queues
                .entry(h.queue.to_string())
                .or_default()
                .push_back(h.clone());
            st.published += 1;
        }
        drop(st);
        self.ready.notify_waiters();
        Ok(())
    }

    async fn consume(
        &self,
        queues: &[QueueName],
        _prefetch: u16,
    ) -> Result<Box<dyn Consumer>, BrokerError> {
        Ok(Box::new(MemoryConsumer {
            broker: self.clone(),
            queues: queues.iter().map(|q| q.to_string()).collect(),
        }))
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}

struct MemoryConsumer {
    broker: MemoryBroker,
    queues: Vec<String>,
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        loop {
            let notified = self.broker.ready.notified();
            {
                let mut st = self.broker.state.lock().unwrap();
                let st = &mut *st;
                for q in &self.queues {
                    if let Some(h) = st.queues.get_mut(q).and_then(VecDeque::pop_front) {
                        st.next_tag += 1;
                        let tag = st.next_tag;
                        st.unsettled.push((tag, h.clone()));
                        return Ok(Delivery {
                            hint: h,
                            acker: Box::new(MemoryAcker {
                                broker: self.broker.clone(),
                                tag,
                            }),
                            redelivered: false,
                        });
                    }
                }
            }
            notified.await;
        }
    }
}

struct MemoryAcker {
    broker: MemoryBroker,
    tag: u64,
}

impl MemoryAcker {
    fn settle(&self) -> Option<Hint> {
        let mut st = self.broker.state.lock().unwrap();
        let i = st.unsettled.iter().position(|(t, _)| *t == self.tag)?;
        Some(st.unsettled.remove(i).1)
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.settle();
        Ok(())
    }

    async fn requeue(self: Box<Self>) -> Result<(), BrokerError> {
        if let Some(h) = self.settle() {
            self.broker
                .state
                .lock()
                .unwrap()
                .queues
                .entry(h.queue.to_string())
                .or_default()
                .push_front(h);
            self.broker.ready.notify_waiters();
        }
        Ok(())
    }
}
