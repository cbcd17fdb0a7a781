//! `[sampler.server]`: a manifest's samples drawn on inference servers (the
//! batcher calls [`SamplerBackend::sample`] where it would sample in
//! process, and [`SamplerBackend::refresh`] at each proposal refresh).

use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
use align_core::task::Prompt;
use align_core::{Plugin, PluginError, Policy, SampleBatch, SamplerBackend, SamplingConfig};

use crate::config::ServerSamplerConfig;
use crate::ServerSampler;

impl SamplerBackend for ServerSampler {
    fn sample(
        &self,
        policy: &dyn Policy,
        from_prior: bool,
        prompts: &[Prompt],
        n: i64,
        max_new_tokens: i64,
        eos: Option<i64>,
        config: &SamplingConfig,
        seed: u64,
    ) -> anyhow::Result<SampleBatch> {
        let batch = if from_prior {
            self.sample_prior(policy, prompts, n, max_new_tokens, eos, config, seed)?
        } else {
            ServerSampler::sample(self, policy, prompts, n, max_new_tokens, eos, config, seed)?
        };
        if let Some(r) = self.last_report() {
            // The servers' log-densities beside the trainer's, for the log.
            eprintln!(
                "  sampled {} rows on {}: server vs trainer log-density, max |Δ| {:.2e}, mean {:.2e}",
                batch.len(),
                self.endpoints().join(", "),
                r.max_abs_diff,
                r.mean_abs_diff
            );
        }
        Ok(batch)
    }

    fn refresh(&self, policy: &dyn Policy, version: u64) -> anyhow::Result<()> {
        ServerSampler::refresh(self, policy, version).map(|_| ())
    }

    fn describe(&self) -> String {
        format!("servers {}", self.endpoints().join(", "))
    }
}

fn construct(de: ConfigDeserializer) -> Result<Built<dyn SamplerBackend>, PluginError> {
    build_from_config(de, |c: &ServerSamplerConfig| {
        c.validate("")?;
        let sampler = ServerSampler::new(c.clone())
            .map_err(|e| PluginError::invalid("urls", format!("{e:#}")))?;
        Ok(Box::new(sampler) as Box<dyn SamplerBackend>)
    })
}

align_core::inventory::submit! {
    Plugin {
        name: "server",
        description: "samples drawn on vLLM / SGLang / llama.cpp servers, log-densities recomputed by the trainer",
        constructor: Constructor::Sampler(construct),
    }
}
