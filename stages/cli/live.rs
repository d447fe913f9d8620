//! The live page of `codelupe run`: the pipeline as a row of stages with their rates,
//! the lag on each topic, why records were skipped, and the trainer's loss curve. It is
//! drawn from the stages' own metrics (their registries in this process, the trainer's
//! `/status`) and served on its own port; the chart is uPlot, vendored from npm.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codelupe_runtime::kafka::{KafkaClients, LagReader};
use codelupe_runtime::telemetry::{self, HttpResponse, Router, StatusCode};
use codelupe_runtime::topology::Topology;
use prometheus::proto::{MetricFamily, MetricType};
use prometheus::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use codelupe_runtime::descriptor::Flow;

const PAGE: &str = include_str!("live/index.html");
const UPLOT_JS: &str = include_str!("live/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("live/vendor/uPlot.min.css");

/// Loss points kept for the chart (about a day of steps at the tiny preset's pace).
const MAX_POINTS: usize = 20_000;
/// Rates are measured over this window.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// One stage as the page follows it.
pub struct Tracked {
    pub name: String,
    /// Its metrics, when it runs in this process.
    pub registry: Option<Registry>,
    pub flow: Option<&'static Flow>,
    /// What the stage's progress line shows: (label, metric summed over its series).
    pub progress: &'static [(&'static str, &'static str)],
    /// Set when it does not run in this process: `own process …` or `not running: …`.
    pub note: Option<String>,
}

/// What the page shows, as `/api/board` serves it.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Board {
    pub stages: Vec<StageCard>,
    pub topics: Vec<TopicLag>,
    pub skips: Vec<Skip>,
    /// (step, loss) of each optimiser step seen, and of each evaluation.
    pub train_loss: Vec<(u64, f64)>,
    pub eval_loss: Vec<(u64, f64)>,
    /// (step, loss) of each evaluation on each language's tokens.
    pub eval_loss_by_language: BTreeMap<String, Vec<(u64, f64)>>,
    pub trainer: Option<TrainerStatus>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct StageCard {
    pub name: String,
    pub note: Option<String>,
    pub consumed: f64,
    pub produced: f64,
    pub consumed_per_second: f64,
    pub produced_per_second: f64,
    pub dead_letters: f64,
    /// The stage's progress counters, by label (files, duplicates, tokens, …).
    pub progress: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicLag {
    pub topic: String,
    pub from: Option<String>,
    pub to: String,
    /// Records the reading stage's group has not committed; None until first read.
    pub lag: Option<i64>,
}

/// A counter with a `reason` label: files skipped, repositories filtered, dead letters.
#[derive(Debug, Clone, Serialize)]
pub struct Skip {
    pub stage: String,
    pub metric: String,
    pub reason: String,
    pub count: f64,
}

/// The part of the trainer's `/status` the page and the summary use.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainerStatus {
    pub state: String,
    pub step: u64,
    pub tokens_seen: u64,
    pub train_loss: Option<f64>,
    pub eval_loss: Option<f64>,
    pub eval_loss_by_language: BTreeMap<String, f64>,
    pub tokens_per_second: f64,
    pub last_checkpoint: Option<String>,
}

/// The sum of every series of metric `name` (counters and gauges).
pub fn metric_total(families: &[MetricFamily], name: &str) -> f64 {
    families
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

/// Serves the page on `port` and keeps its board up to date until `stop` is cancelled;
/// the task returns the board as it was last sampled (after the stages stopped, when
/// `stop` is cancelled after them).
pub async fn start(
    addr: std::net::SocketAddr,
    tracked: Vec<Tracked>,
    topology: &Topology,
    clients: KafkaClients,
    trainer_status_url: Option<String>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<Board>> {
    let board = Arc::new(Mutex::new(Board::default()));
    let served = board.clone();
    let router: Router = Arc::new(move |path| route(path, &served));
    let server = telemetry::serve_http(addr, "the live page", router, stop.clone()).await?;
    let topics = topology
        .stages
        .iter()
        .filter_map(|(name, stage)| {
            let (input, group) = (stage.input.clone()?, stage.group.clone()?);
            let from = topology
                .stages
                .iter()
                .find(|(_, s)| s.output.as_deref() == Some(input.as_str()))
                .map(|(n, _)| n.clone());
            Some((input, from, name.clone(), group))
        })
        .collect();
    let mut sampler = Sampler {
        board,
        rates: tracked.iter().map(|_| VecDeque::new()).collect(),
        tracked,
        topics,
        lag_readers: Arc::new(Mutex::new(Vec::new())),
        clients,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()?,
        trainer_status_url,
    };
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut lag_tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    sampler.sample_stages();
                    sampler.poll_trainer().await;
                }
                _ = lag_tick.tick() => sampler.read_lag().await,
            }
        }
        sampler.sample_stages();
        let _ = server.await;
        let board = sampler.board.lock().expect("board lock").clone();
        drop(sampler);
        board
    }))
}

fn route(path: &str, board: &Mutex<Board>) -> HttpResponse {
    match path {
        "/" | "/index.html" => telemetry::body("text/html; charset=utf-8", PAGE),
        "/uPlot.iife.min.js" => telemetry::body("text/javascript", UPLOT_JS),
        "/uPlot.min.css" => telemetry::body("text/css", UPLOT_CSS),
        "/api/board" => match serde_json::to_string(&*board.lock().expect("board lock")) {
            Ok(json) => telemetry::body("application/json", json),
            Err(e) => telemetry::text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        _ => telemetry::text(StatusCode::NOT_FOUND, "no such page\n".into()),
    }
}

struct Sampler {
    board: Arc<Mutex<Board>>,
    tracked: Vec<Tracked>,
    /// Per tracked stage, recent (time, consumed, produced) samples.
    rates: Vec<VecDeque<(Instant, f64, f64)>>,
    /// (topic, writing stage, reading stage, reading group)
    topics: Vec<(String, Option<String>, String, String)>,
    lag_readers: Arc<Mutex<Vec<Option<LagReader>>>>,
    clients: KafkaClients,
    http: reqwest::Client,
    trainer_status_url: Option<String>,
}

impl Sampler {
    fn sample_stages(&mut self) {
        let now = Instant::now();
        let mut cards = Vec::new();
        let mut skips = Vec::new();
        for (stage, window) in self.tracked.iter().zip(&mut self.rates) {
            let mut card = StageCard {
                name: stage.name.clone(),
                note: stage.note.clone(),
                ..StageCard::default()
            };
            if let Some(registry) = &stage.registry {
                let families = registry.gather();
                if let Some(flow) = stage.flow {
                    card.consumed = metric_total(&families, flow.consumed);
                    card.produced = metric_total(&families, flow.produced);
                }
                card.dead_letters =
                    metric_total(&families, codelupe_runtime::consume::DEAD_LETTERS);
                card.progress = stage
                    .progress
                    .iter()
                    .map(|(label, metric)| (label.to_string(), metric_total(&families, metric)))
                    .collect();
                skips.extend(reasons(&stage.name, &families));
            }
            window.push_back((now, card.consumed, card.produced));
            while window.len() > 2 && now - window[1].0 >= RATE_WINDOW {
                window.pop_front();
            }
            if let (Some(first), Some(last)) = (window.front(), window.back()) {
                let seconds = (last.0 - first.0).as_secs_f64();
                if seconds > 0.0 {
                    card.consumed_per_second = (last.1 - first.1) / seconds;
                    card.produced_per_second = (last.2 - first.2) / seconds;
                }
            }
            cards.push(card);
        }
        let mut board = self.board.lock().expect("board lock");
        board.stages = cards;
        board.skips = skips;
    }

    /// Follows the trainer's `/status`: a point per step seen, one per evaluation.
    async fn poll_trainer(&mut self) {
        let Some(url) = &self.trainer_status_url else {
            return;
        };
        let Ok(response) = self.http.get(url).send().await else {
            return;
        };
        let Ok(status) = response.json::<TrainerStatus>().await else {
            return;
        };
        let mut board = self.board.lock().expect("board lock");
        let previous = board.trainer.take().unwrap_or_default();
        if let Some(loss) = status.train_loss {
            if status.step > 0 && board.train_loss.last().map(|p| p.0) != Some(status.step) {
                push_bounded(&mut board.train_loss, (status.step, loss));
            }
        }
        if let Some(loss) = status.eval_loss {
            if status.last_checkpoint != previous.last_checkpoint || board.eval_loss.is_empty() {
                // The evaluation belongs to the checkpoint's step; the trainer may have
                // stepped on since.
                let step = status
                    .last_checkpoint
                    .as_deref()
                    .and_then(checkpoint_step)
                    .unwrap_or(status.step);
                push_bounded(&mut board.eval_loss, (step, loss));
                for (language, loss) in &status.eval_loss_by_language {
                    let curve = board
                        .eval_loss_by_language
                        .entry(language.clone())
                        .or_default();
                    push_bounded(curve, (step, *loss));
                }
            }
        }
        board.trainer = Some(status);
    }

    async fn read_lag(&mut self) {
        let readers = self.lag_readers.clone();
        let clients = self.clients.clone();
        let topics = self.topics.clone();
        let lags = tokio::task::spawn_blocking(move || {
            let mut readers = readers.lock().expect("lag readers lock");
            readers.resize_with(topics.len(), || None);
            topics
                .iter()
                .zip(readers.iter_mut())
                .map(|((topic, _, _, group), reader)| {
                    if reader.is_none() {
                        *reader = LagReader::new(&clients, group, topic).ok();
                    }
                    reader.as_mut()?.lag().ok()
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let views = self
            .topics
            .iter()
            .zip(lags.into_iter().chain(std::iter::repeat(None)))
            .map(|((topic, from, to, _), lag)| TopicLag {
                topic: topic.clone(),
                from: from.clone(),
                to: to.clone(),
                lag,
            })
            .collect();
        self.board.lock().expect("board lock").topics = views;
    }
}

/// The step in a checkpoint folder's name (`…/step-0000000020`).
fn checkpoint_step(dir: &str) -> Option<u64> {
    dir.rsplit('/').next()?.strip_prefix("step-")?.parse().ok()
}

fn push_bounded(points: &mut Vec<(u64, f64)>, point: (u64, f64)) {
    if points.len() >= MAX_POINTS {
        points.remove(0);
    }
    points.push(point);
}

/// Every non-zero series of a counter labelled `reason`.
fn reasons(stage: &str, families: &[MetricFamily]) -> Vec<Skip> {
    families
        .iter()
        .filter(|f| f.get_field_type() == MetricType::COUNTER)
        .flat_map(|family| {
            family.get_metric().iter().filter_map(move |m| {
                let reason = m.get_label().iter().find(|l| l.name() == "reason")?;
                let count = m.get_counter().get_value();
                (count > 0.0).then(|| Skip {
                    stage: stage.to_string(),
                    metric: family.name().to_string(),
                    reason: reason.value().to_string(),
                    count,
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_lists_the_non_zero_series_of_reason_labelled_counters() {
        let registry = Registry::new();
        let skipped = telemetry::register::counter_vec(
            &registry,
            "processor_files_skipped_total",
            "h",
            "reason",
            &["vendored", "binary"],
        )
        .unwrap();
        skipped.with_label_values(&["vendored"]).inc_by(3);
        telemetry::register::counter(&registry, "processor_files_processed_total", "h")
            .unwrap()
            .inc();
        let found = reasons("processor", &registry.gather());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].reason, "vendored");
        assert_eq!(found[0].count, 3.0);
        assert_eq!(found[0].metric, "processor_files_skipped_total");
    }

    #[test]
    fn checkpoint_step_reads_the_folder_name() {
        assert_eq!(
            checkpoint_step(".codelupe/checkpoints/step-0000000020"),
            Some(20)
        );
        assert_eq!(checkpoint_step("step-7"), Some(7));
        assert_eq!(checkpoint_step("/tmp/other"), None);
    }

    #[test]
    fn metric_total_sums_every_series() {
        let registry = Registry::new();
        let c =
            telemetry::register::counter_vec(&registry, "x_total", "h", "reason", &["a"]).unwrap();
        c.with_label_values(&["a"]).inc_by(2);
        c.with_label_values(&["b"]).inc_by(5);
        assert_eq!(metric_total(&registry.gather(), "x_total"), 7.0);
        assert_eq!(metric_total(&registry.gather(), "missing"), 0.0);
    }
}
