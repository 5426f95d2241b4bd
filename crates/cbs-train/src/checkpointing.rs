//! Activation checkpointing per transformer block: the forward pass keeps only each block's
//! input (no block's graph of intermediate activations survives it); the backward pass
//! recomputes one block at a time from its saved input and back-propagates through it alone.
//! Peak memory drops from every block's activations to one block's plus the block inputs, for
//! one more forward pass of the blocks.
//!
//! candle has no checkpoint primitive, so the chain rule across blocks is applied by hand: a
//! block's recomputed output `h_{i+1}` and the gradient `g` arriving at it give the block's
//! parameter gradients and the gradient at its input by back-propagating `Σ h_{i+1} ⊙ g` from
//! fresh variables standing for `h_i` and the conditioning tensors (whose gradients add up over
//! the blocks and the head, then flow into the embeddings).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use cbs_models::Staged;

use crate::Result;

/// What a checkpointed forward and backward return: the network output (detached), the loss
/// and the gradients of every variable in `vars`.
pub struct Checkpointed {
    pub output: Tensor,
    pub loss: Tensor,
    pub grads: GradStore,
}

/// Adds the gradients `from` holds for `vars` into `into`.
fn accumulate(into: &mut GradStore, from: &GradStore, vars: &[(String, Var)]) -> Result<()> {
    for (_, v) in vars {
        if let Some(g) = from.get(v) {
            let sum = match into.get(v) {
                Some(acc) => (acc + g)?,
                None => g.clone(),
            };
            into.insert(v, sum);
        }
    }
    Ok(())
}

/// Σ a ⊙ g over all elements (the scalar whose gradient with respect to `a` is `g`).
fn dot(a: &Tensor, g: &Tensor) -> Result<Tensor> {
    Ok((a * g.to_dtype(a.dtype())?)?.sum_all()?)
}

/// Forward through `net` with the block activations dropped, `loss_of(output)`, and the
/// backward pass recomputing each block; `vars` are the network's trainable variables.
pub fn forward_backward(
    net: &Staged<'_>,
    vars: &[(String, Var)],
    x: &Tensor,
    t: &Tensor,
    y: &Tensor,
    loss_of: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Checkpointed> {
    // Forward: the stem keeps its (small) graph; each block runs on detached inputs and its
    // output is detached at once, so its intermediate activations are freed.
    let (h0, ctx) = net.stem(x, t, y)?;
    let ctx_d: Vec<Tensor> = ctx.iter().map(|c| c.detach()).collect();
    let n = net.stages();
    let mut inputs = Vec::with_capacity(n + 1);
    inputs.push(h0.detach());
    for i in 0..n {
        let h = net.stage(i, &inputs[i], &ctx_d)?.detach();
        inputs.push(h);
    }
    let fresh = |t: &Tensor| Var::from_tensor(t);
    // Head and loss, with variables standing for the last tokens and the conditioning.
    let hv = fresh(&inputs[n])?;
    let cv: Vec<Var> = ctx_d
        .iter()
        .map(fresh)
        .collect::<candle_core::Result<_>>()?;
    let cts: Vec<Tensor> = cv.iter().map(|v| v.as_tensor().clone()).collect();
    let output = net.head(hv.as_tensor(), &cts, x, t)?;
    let loss = loss_of(&output)?;
    let head_grads = loss.backward()?;
    let mut grads = GradStore::default();
    accumulate(&mut grads, &head_grads, vars)?;
    let grad_of = |store: &GradStore, v: &Var| -> Result<Tensor> {
        Ok(match store.get(v) {
            Some(g) => g.clone(),
            None => v.zeros_like()?,
        })
    };
    let mut g_h = grad_of(&head_grads, &hv)?;
    let mut g_ctx: Vec<Tensor> = cv
        .iter()
        .map(|v| grad_of(&head_grads, v))
        .collect::<Result<_>>()?;
    drop(head_grads);
    // Blocks in reverse, each recomputed from its saved input.
    for i in (0..n).rev() {
        let hv = fresh(&inputs[i])?;
        let cv: Vec<Var> = ctx_d
            .iter()
            .map(fresh)
            .collect::<candle_core::Result<_>>()?;
        let cts: Vec<Tensor> = cv.iter().map(|v| v.as_tensor().clone()).collect();
        let out = net.stage(i, hv.as_tensor(), &cts)?;
        let gi = dot(&out, &g_h)?.backward()?;
        accumulate(&mut grads, &gi, vars)?;
        g_h = grad_of(&gi, &hv)?;
        for (acc, v) in g_ctx.iter_mut().zip(&cv) {
            *acc = (&*acc + grad_of(&gi, v)?)?;
        }
    }
    // The embeddings, from the gradients at their outputs.
    let mut surrogate = dot(&h0, &g_h)?;
    for (c, g) in ctx.iter().zip(&g_ctx) {
        surrogate = (surrogate + dot(c, g)?)?;
    }
    let gs = surrogate.backward()?;
    accumulate(&mut grads, &gs, vars)?;
    Ok(Checkpointed {
        output: output.detach(),
        loss,
        grads,
    })
}
