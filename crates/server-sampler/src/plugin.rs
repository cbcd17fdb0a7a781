//! `[sampler.server]`: a manifest's samples drawn on inference servers (the
//! batcher calls [`SamplerBackend::sample`] where it would sample in
//! process, and [`SamplerBackend::refresh`] at each proposal refresh).

use align_core::registry::{build_from_config, Built, ConfigDeserializer, Constructor};
use align_core::sampling::Part;
use align_core::task::Prompt;
use align_core::{
    Metrics, Plugin, PluginError, Policy, SampleBatch, SamplerBackend, SamplingConfig,
};

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
        part: Part,
    ) -> anyhow::Result<SampleBatch> {
        self.sample_part(
            policy,
            from_prior,
            prompts,
            n,
            max_new_tokens,
            eos,
            config,
            seed,
            part,
        )
    }

    fn refresh(
        &self,
        policy: &dyn Policy,
        version: u64,
        comm: &dyn align_distributed::Comm,
    ) -> anyhow::Result<()> {
        ServerSampler::refresh(self, policy, version, comm).map(|_| ())
    }

    fn describe(&self) -> String {
        format!("servers {}", self.endpoints().join(", "))
    }

    /// The servers' log-densities of the latest draw against the trainer's.
    fn metrics(&self) -> Metrics {
        let mut m = Metrics::new();
        if let Some(r) = self.last_report() {
            m.set("server_logp_max_abs_diff", r.max_abs_diff);
            m.set("server_logp_mean_abs_diff", r.mean_abs_diff);
        }
        m
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
