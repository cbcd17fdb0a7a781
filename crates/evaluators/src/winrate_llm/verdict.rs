//! Judge prompts and the position-debiased verdicts read from both orders.

/// The judge prompt for one ordered pair. Placeholders are replaced in one
/// pass, so a response that itself contains `{second}` stays as written.
pub fn render(
    template: &str,
    prompt: &str,
    first: &str,
    second: &str,
    first_label: &str,
    second_label: &str,
) -> String {
    let slots = [
        ("{prompt}", prompt.trim()),
        ("{first}", first.trim()),
        ("{second}", second.trim()),
        ("{first_label}", first_label),
        ("{second_label}", second_label),
    ];
    let mut out = String::with_capacity(template.len() + prompt.len() + first.len() + second.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        match slots.iter().find(|(slot, _)| rest.starts_with(slot)) {
            Some((slot, value)) => {
                out.push_str(value);
                rest = &rest[slot.len()..];
            }
            None => {
                out.push('{');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Per-pair columns from the judge's probability of answering "first" with
/// the policy's response shown first (`policy_first`) and shown second
/// (`gold_first`).
#[derive(Debug, Clone, PartialEq)]
pub struct Verdicts {
    /// 1 if the policy's response is preferred in both orders, 0 if gold is,
    /// ½ otherwise.
    pub win: Vec<f64>,
    /// Fraction of the two orders in which the first response was chosen.
    pub first: Vec<f64>,
    /// Mean over the orders of P(policy's response is better).
    pub prob: Vec<f64>,
}

/// +1 if the judge picks the first response, −1 the second, 0 if undecided.
fn pick(p_first: f64) -> i8 {
    if p_first > 0.5 {
        1
    } else if p_first < 0.5 {
        -1
    } else {
        0
    }
}

impl Verdicts {
    pub fn from_orders(policy_first: &[f64], gold_first: &[f64]) -> Verdicts {
        assert_eq!(policy_first.len(), gold_first.len(), "one of each order");
        let mut v = Verdicts {
            win: Vec::with_capacity(policy_first.len()),
            first: Vec::with_capacity(policy_first.len()),
            prob: Vec::with_capacity(policy_first.len()),
        };
        for (&p1, &p2) in policy_first.iter().zip(gold_first) {
            let (o1, o2) = (pick(p1), pick(p2));
            // The policy wins order 1 by being picked first, order 2 second.
            v.win.push(match (o1, o2) {
                (1, -1) => 1.0,
                (-1, 1) => 0.0,
                _ => 0.5,
            });
            let chose_first = |o: i8| f64::from(o + 1) / 2.0; // 1, ½, 0
            v.first.push((chose_first(o1) + chose_first(o2)) / 2.0);
            v.prob.push((p1 + (1.0 - p2)) / 2.0);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::winrate_llm::DEFAULT_TEMPLATE;

    #[test]
    fn the_default_template_renders_the_pair_in_order() {
        let text = render(DEFAULT_TEMPLATE, " Hi? ", "one {second}", "two\n", "A", "B");
        assert_eq!(
            text,
            "For the following query to a chatbot, which response is more helpful?\n\n\
             Query: Hi?\n\n\
             Response A:\none {second}\n\n\
             Response B:\ntwo\n\n\
             State only \"A\" or \"B\" to indicate which response is more helpful.\n\
             More helpful:"
        );
        assert_eq!(render("{x} {prompt}{", "p", "", "", "A", "B"), "{x} p{");
    }

    #[test]
    fn verdicts_need_both_orders() {
        // Prefers the policy both ways; gold both ways; always the first
        // shown (pure position bias); undecided in one order.
        let v = Verdicts::from_orders(&[0.9, 0.2, 0.8, 0.5], &[0.3, 0.7, 0.6, 0.1]);
        assert_eq!(v.win, [1.0, 0.0, 0.5, 0.5]);
        assert_eq!(v.first, [0.5, 0.5, 1.0, 0.25]);
        let expected = [0.8, 0.25, 0.6, 0.7];
        for (got, want) in v.prob.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
    }
}
