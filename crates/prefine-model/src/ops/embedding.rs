//! `word[ids] + position[0..seq] + token_type[type_ids]` (BERT's embedding sum before its layer
//! norm) as one op. candle's composition (`index_select`, `narrow`, `broadcast_add`, `add`)
//! keeps a graph node per step, and its `index_select` backward fills a zero gradient of the
//! whole word table and then copies it again to add the rows in (`index_add` is out of place):
//! two passes over a 30522 x 384 table per training step. Here each table's gradient is one
//! zeroed buffer with the token rows added in place, and a table that does not track gradients
//! gets none.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, with_f32};

/// Tokens per parallel task of the forward gather.
const TOKENS_PER_TASK: usize = 64;

struct EmbeddingSum {
    /// `[batch * seq]` word ids.
    ids: Vec<u32>,
    /// `[batch * seq]` token-type ids.
    type_ids: Vec<u32>,
    batch: usize,
    seq: usize,
}

/// Checks that every id addresses a row of a `rows`-row table.
fn check_ids(ids: &[u32], rows: usize, what: &str) -> Result<()> {
    match ids.iter().find(|&&i| i as usize >= rows) {
        Some(i) => candle_core::bail!("embedding: {what} id {i} outside a table of {rows} rows"),
        None => Ok(()),
    }
}

impl EmbeddingSum {
    /// `(rows, hidden)` of a 2-d table.
    fn table_dims(l: &Layout, what: &str) -> Result<(usize, usize)> {
        match l.dims() {
            &[r, h] => Ok((r, h)),
            d => candle_core::bail!("embedding: {what} table must be 2-d, got {d:?}"),
        }
    }

    /// Gradient of a table of `rows` rows: the output-gradient row of every token added to the
    /// table row that token read (`row_of(token)`).
    fn table_grad(
        &self,
        table: &Tensor,
        dy: &[f32],
        h: usize,
        row_of: impl Fn(usize) -> usize,
    ) -> Result<Option<Tensor>> {
        if !table.track_op() {
            return Ok(None);
        }
        let rows = table.dims()[0];
        let mut grad = vec![0f32; rows * h];
        for (t, g) in dy.chunks_exact(h).enumerate() {
            let r = row_of(t);
            grad[r * h..(r + 1) * h]
                .iter_mut()
                .zip(g)
                .for_each(|(d, g)| *d += g);
        }
        Ok(Some(Tensor::from_vec(grad, (rows, h), table.device())?))
    }
}

impl CustomOp3 for EmbeddingSum {
    fn name(&self) -> &'static str {
        "prefine-embedding-sum"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (vocab, h) = Self::table_dims(l1, "word")?;
        let (positions, hp) = Self::table_dims(l2, "position")?;
        let (types, ht) = Self::table_dims(l3, "token type")?;
        if hp != h || ht != h {
            candle_core::bail!("embedding: tables of widths {h}, {hp} and {ht}");
        }
        if self.seq > positions {
            candle_core::bail!("embedding: {} positions, table has {positions}", self.seq);
        }
        check_ids(&self.ids, vocab, "word")?;
        check_ids(&self.type_ids, types, "token type")?;
        let word = f32_slice(s1, l1, "embedding")?;
        let pos = f32_slice(s2, l2, "embedding")?;
        let typ = f32_slice(s3, l3, "embedding")?;
        let n = self.batch * self.seq * h;
        let mut out: Vec<f32> = Vec::with_capacity(n);
        out.spare_capacity_mut()[..n]
            .par_chunks_mut(TOKENS_PER_TASK * h)
            .enumerate()
            .for_each(|(c, chunk)| {
                for (i, row) in chunk.chunks_exact_mut(h).enumerate() {
                    let t = c * TOKENS_PER_TASK + i;
                    let w = &word[self.ids[t] as usize * h..][..h];
                    let p = &pos[(t % self.seq) * h..][..h];
                    let y = &typ[self.type_ids[t] as usize * h..][..h];
                    // Same order as `(word + position) + token_type`.
                    for (j, o) in row.iter_mut().enumerate() {
                        o.write((w[j] + p[j]) + y[j]);
                    }
                }
            });
        // SAFETY: the chunks cover all n elements, every row written in full.
        unsafe { out.set_len(n) };
        Ok((CpuStorage::F32(out), Shape::from((self.batch, self.seq, h))))
    }

    fn bwd(
        &self,
        word: &Tensor,
        pos: &Tensor,
        typ: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let h = word.dims()[1];
        with_f32(dy, "embedding.backward", |g| {
            Ok((
                self.table_grad(word, g, h, |t| self.ids[t] as usize)?,
                self.table_grad(pos, g, h, |t| t % self.seq)?,
                self.table_grad(typ, g, h, |t| self.type_ids[t] as usize)?,
            ))
        })?
    }
}

/// `word[ids] + position[0..seq] + token_type[type_ids]` as `[batch, seq, hidden]`, for `ids` and
/// `type_ids` of shape `[batch, seq]` (u32) and f32 tables `[rows, hidden]`. Without a token-type
/// table (DistilBERT) pass `None`. Gradients flow to the tables that track them.
pub fn embedding_sum(
    word: &Tensor,
    position: &Tensor,
    token_type: Option<&Tensor>,
    ids: &Tensor,
    type_ids: &Tensor,
) -> Result<Tensor> {
    let (batch, seq) = ids.dims2()?;
    let h = word.dim(1)?;
    let ids = ids.flatten_all()?.to_vec1::<u32>()?;
    let (table, type_ids) = match token_type {
        Some(t) => (t.contiguous()?, type_ids.flatten_all()?.to_vec1::<u32>()?),
        // A constant zero row that every token reads: the sum is unchanged.
        None => (
            Tensor::zeros((1, h), candle_core::DType::F32, word.device())?,
            vec![0; ids.len()],
        ),
    };
    if type_ids.len() != ids.len() {
        candle_core::bail!(
            "embedding: {} token types for {} tokens",
            type_ids.len(),
            ids.len()
        );
    }
    let op = EmbeddingSum {
        ids,
        type_ids,
        batch,
        seq,
    };
    word.contiguous()?.apply_op3_arc(
        &position.contiguous()?,
        &table,
        std::sync::Arc::new(Box::new(op)),
    )
}
