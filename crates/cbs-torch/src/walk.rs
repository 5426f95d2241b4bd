//! Names the tensors of an unpickled object: dict keys (and list indices) joined with dots, as
//! `torch.load(...)["model"]["blocks.0.attn.qkv.weight"]` becomes `model.blocks.0.attn.qkv.weight`.
//!
//! The traversal is iterative with a depth bound, and every node it reaches counts against the
//! cell limit, so a shared sub-tree reached exponentially often (or a cycle) ends in an error,
//! not in a hang. Records (`argparse.Namespace`, …) are not entered: their contents are settings,
//! not weights.

use std::collections::HashMap;

use crate::limits::{Limit, Limits, MAX_NAME_BYTES};
use crate::pickle::{Id, Node, Pickle, TensorRef};

pub(crate) struct Named {
    pub name: String,
    pub tensor: TensorRef,
}

/// A limit the traversal ran into: (what, value, limit).
pub(crate) type Overrun = (Limit, u64, u64);

/// Every tensor reachable from the root, in pickle order; a name given twice (a dict key set
/// twice) keeps its first position and its last value, as a Python dict does.
pub(crate) fn named_tensors(p: &Pickle, limits: &Limits) -> Result<Vec<Named>, Overrun> {
    let mut out: Vec<Named> = vec![];
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut stack: Vec<(Id, String, u64)> = vec![(p.root, String::new(), 0)];
    // Every name built counts, whether or not it ends at a tensor: that bounds the stack too.
    let (mut pushes, mut name_bytes) = (1u64, 0u64);
    let mut push =
        |stack: &mut Vec<(Id, String, u64)>, id: Id, parent: &str, key: &str, depth: u64| {
            pushes += 1;
            if pushes > limits.max_cells {
                return Err((Limit::Cells, pushes, limits.max_cells));
            }
            if depth > limits.max_depth {
                return Err((Limit::Depth, depth, limits.max_depth));
            }
            let name = if parent.is_empty() {
                key.to_string()
            } else {
                format!("{parent}.{key}")
            };
            name_bytes += name.len() as u64;
            if name_bytes > MAX_NAME_BYTES {
                return Err((Limit::NameBytes, name_bytes, MAX_NAME_BYTES));
            }
            stack.push((id, name, depth));
            Ok(())
        };
    while let Some((id, name, depth)) = stack.pop() {
        match p.node(id) {
            Node::Tensor(t) => match index.get(&name) {
                Some(&i) => out[i].tensor = t.clone(),
                None => {
                    index.insert(name.clone(), out.len());
                    out.push(Named {
                        name,
                        tensor: t.clone(),
                    });
                }
            },
            Node::Dict(items) => {
                for &(k, v) in items.iter().rev() {
                    let key = match p.node(k) {
                        Node::Str(s) => s.clone(),
                        Node::Int(i) => i.to_string(),
                        _ => continue,
                    };
                    push(&mut stack, v, &name, &key, depth + 1)?;
                }
            }
            Node::List(items) | Node::Tuple(items) => {
                for (i, &v) in items.iter().enumerate().rev() {
                    push(&mut stack, v, &name, &i.to_string(), depth + 1)?;
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
