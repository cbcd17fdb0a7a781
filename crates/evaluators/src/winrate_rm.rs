//! Win rate against gold judged by reward models: for each held-out
//! completion, each judge scores it and the gold response of its prompt; a
//! higher score is a win, a tie counts half. The judges are the training
//! reward (`win_train`) and any reward plugin listed under `judges`, e.g. a
//! held-out reward model trained on other data, so a policy that games its
//! training reward shows up as a gap between the columns.

use std::sync::Mutex;

use align_core::build::{build_plugin_at, slot_parts};
use align_core::evaluator::wins_against;
use align_core::registry::{build_resolving, Built, ConfigDeserializer, Constructor, Registry};
use align_core::{
    EvalContext, Evaluation, Evaluator, HeldOut, Plugin, PluginError, Policy, RewardModel,
    RewardSpec,
};
use serde::{Deserialize, Serialize};
use tch::Device;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WinrateRmConfig {
    /// Judge by the training reward too (column `win_train`).
    #[serde(default = "yes")]
    pub training: bool,
    /// Held-out judges: name → reward plugin, e.g.
    /// `bt = { hf-rm = { path = "…" } }` or `lexicon = "lexicon"`.
    #[serde(default)]
    pub judges: toml::Table,
}

fn yes() -> bool {
    true
}

struct Judge {
    name: String,
    spec: Box<dyn RewardSpec>,
}

/// The judges' models, built on the evaluation device at first use.
type BuiltJudges = Mutex<Option<(Device, Vec<Box<dyn RewardModel>>)>>;

pub struct WinrateRm {
    training: bool,
    judges: Vec<Judge>,
    built: BuiltJudges,
}

impl Evaluator for WinrateRm {
    fn evaluate(
        &self,
        ctx: &EvalContext,
        _policy: &dyn Policy,
        held_out: Option<&HeldOut>,
    ) -> anyhow::Result<Evaluation> {
        let h = held_out.expect("winrate-rm reads held-out completions");
        let gold = h
            .gold_rows()
            .ok_or_else(|| anyhow::anyhow!("the task has no gold responses to compare with"))?;
        let _guard = tch::no_grad_guard();
        let mut e = Evaluation::default();
        if self.training {
            e.column(
                "win_train",
                wins_against(&ctx.reward.score(&h.batch)?, &ctx.reward.score(&gold)?),
            );
        }
        let mut built = self.built.lock().expect("judge models");
        if built.as_ref().map(|(d, _)| *d) != Some(ctx.device) {
            let models = self
                .judges
                .iter()
                .map(|j| {
                    j.spec
                        .build(ctx.device)
                        .map_err(|err| anyhow::anyhow!("judge `{}`: {err:#}", j.name))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            *built = Some((ctx.device, models));
        }
        let (_, models) = built.as_ref().expect("built above");
        for (judge, model) in self.judges.iter().zip(models) {
            let policy = model.score(&h.batch)?; // [N]
            let reference = model.score(&gold)?; // [N]
            e.column(
                format!("win_{}", judge.name),
                wins_against(&policy, &reference),
            );
        }
        Ok(e)
    }
}

/// `train` is the training reward's column.
fn check_name(name: &str) -> Result<(), PluginError> {
    let key = format!("judges.{name}");
    crate::check_judge_name(&key, name)?;
    if name == "train" {
        return Err(PluginError::invalid(
            &key,
            "`train` is the training reward's column (`training = true`); name this judge otherwise",
        ));
    }
    Ok(())
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn Evaluator>, PluginError> {
    build_resolving(de, |c: &mut WinrateRmConfig, base| {
        let mut judges = Vec::new();
        for (name, slot) in c.judges.iter_mut() {
            check_name(name)?;
            let key = format!("judges.{name}");
            let (plugin, settings) = slot_parts(slot).ok_or_else(|| {
                PluginError::invalid(
                    &key,
                    "give one reward plugin, e.g. `lexicon = \"lexicon\"` or `bt = { hf-rm = { path = \"…\" } }`",
                )
            })?;
            let (spec, resolved) =
                build_plugin_at::<dyn RewardSpec>(Registry::global(), &plugin, settings, base)
                    .map_err(|err| PluginError::invalid(&key, err.to_string()))?;
            *slot = toml::Value::Table(toml::Table::from_iter([(plugin, resolved)]));
            judges.push(Judge {
                name: name.clone(),
                spec,
            });
        }
        if !c.training && judges.is_empty() {
            return Err(PluginError::invalid(
                "judges",
                "no judge: list at least one under `judges`, or keep `training = true`",
            ));
        }
        Ok(Box::new(WinrateRm {
            training: c.training,
            judges,
            built: Mutex::new(None),
        }) as Box<dyn Evaluator>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "winrate-rm",
        description: "win rate vs gold on held-out prompts, judged by the training reward and by held-out reward models (ties count half)",
        constructor: Constructor::Evaluator(construct),
    }
}
