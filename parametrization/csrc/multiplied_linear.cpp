// The multiplied Linear of parametrization/multiplied_ops.py as a C++ autograd Function.
//
// Same maths, same products in the same order (outputs and gradients are bitwise those of the
// Python op, tested), for the eager float path without autocast: y = x W_effᵀ + b with
// W_eff = f·s·diag(r)·W·diag(c), saving only x, W, s, r, c. Its backward runs in the autograd
// engine without the Python interpreter, which is the per-call cost the Python Function pays.
// The entry point also makes the multiplied module's per-call checks (multipliers fit the weight,
// activation side or not, autocast), which cost more as Python attribute reads than the layer's
// own arithmetic on small layers. Absent multipliers and bias are empty optionals (None).
#include <ATen/autocast_mode.h>
#include <torch/extension.h>

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

// absorbed_factors: f·s folded into the shorter of r / c (r on a tie), else left as they are.
struct Factors {
  Tensor row, col, scalar;
  double fixed = 1.0;
};

Tensor absorb(Tensor v, const Tensor& s, double fixed) {
  if (s.defined()) v = v * s;
  if (fixed != 1.0) v = v * fixed;
  return v;
}

Factors absorbed(const Tensor& s, const Tensor& r, const Tensor& c, double fixed) {
  bool plain = !s.defined() && fixed == 1.0;
  if (r.defined() && (!c.defined() || r.size(-1) <= c.size(-1)))
    return {plain ? r : absorb(r, s, fixed), c, Tensor(), 1.0};
  if (c.defined()) return {r, plain ? c : absorb(c, s, fixed), Tensor(), 1.0};
  return {Tensor(), Tensor(), s, fixed};
}

// apply_factors on a 2-D t whose rows are on axis rd (0 or 1): f·s·diag(r)·t·diag(c), the same
// products in the same order. in_place: t is a temporary and may be overwritten; every product
// after the first is in place on the fresh tensor the first made, unless a double backward is
// recording them.
Tensor apply_factors(const Tensor& t, const Factors& f, int64_t rd, bool in_place) {
  bool record = at::GradMode::is_enabled();
  bool fresh = in_place;  // out may be overwritten
  Tensor out = t;
  auto mul = [&](const auto& factor) {
    out = (fresh && !record) ? out.mul_(factor) : out * factor;
    fresh = true;
  };
  if (f.row.defined()) mul(rd == 1 ? f.row : f.row.unsqueeze(1));
  if (f.col.defined()) mul(rd == 0 ? f.col : f.col.unsqueeze(1));
  if (!f.row.defined() && !f.col.defined()) {
    if (f.scalar.defined()) mul(f.scalar.reshape({1, 1}));
    if (f.fixed != 1.0) mul(f.fixed);
  }
  return out;
}

// y = x W_effᵀ + b, W_eff built and dropped here: the forward with and without autograd.
Tensor output(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& s, const Tensor& r, const Tensor& c, double fixed) {
  Tensor w_eff = apply_factors(w, absorbed(s, r, c, fixed), 0, /*in_place=*/false);
  return b.defined() ? at::linear(x, w_eff, b) : at::linear(x, w_eff);
}

struct MultipliedLinear : public torch::autograd::Function<MultipliedLinear> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias,
                        const std::optional<Tensor>& scalar, const std::optional<Tensor>& row, const std::optional<Tensor>& col,
                        double fixed) {
    Tensor b = bias.value_or(Tensor()), s = scalar.value_or(Tensor()), r = row.value_or(Tensor()), c = col.value_or(Tensor());
    ctx->save_for_backward({x, w, s, r, c});
    ctx->saved_data["fixed"] = fixed;
    ctx->saved_data["has_bias"] = b.defined();
    return output(x, w, b, s, r, c, fixed);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    Tensor x = saved[0], w = saved[1], s = saved[2], r = saved[3], c = saved[4];
    double fixed = ctx->saved_data["fixed"].toDouble();
    // needs_input_grad counts only the tensors given (an absent optional has no edge).
    int64_t edge = 0;
    auto needs = [&](bool present) { return present && ctx->needs_input_grad(edge++); };
    bool need_x = needs(true), need_w = needs(true), need_b = needs(ctx->saved_data["has_bias"].toBool());
    bool need_s = needs(s.defined()), need_r = needs(r.defined()), need_c = needs(c.defined());
    Tensor gy = grads[0];
    Tensor gy2 = gy.reshape({-1, gy.size(-1)});
    Tensor dx, gw, db, gs, gr, gc;
    Factors f = absorbed(s, r, c, fixed);
    if (need_x) {
      // W_eff rebuilt on the transposed view, as the Python op does (bitwise the forward's values).
      Tensor w_eff = apply_factors(w.transpose(0, 1), f, 1, false).transpose(0, 1);
      dx = at::mm(gy2, w_eff);
      auto shape = x.sizes().vec();
      shape.back() = dx.size(-1);
      dx = dx.view(shape);
    }
    if (need_b) db = gy2.sum(0);
    if (need_w || need_s || need_r || need_c) {
      Tensor g = at::mm(gy2.t(), x.reshape({-1, x.size(-1)}));  // ∂L/∂W_eff of the plain layer
      if (need_s || need_r || need_c) {
        // eq. 4 sums from P = W ⊙ G against the raw r / c, scaled by f·s afterwards.
        Tensor p = w * g;
        Tensor fs = s.defined() ? (fixed != 1.0 ? s.reshape({}) * fixed : s.reshape({})) : Tensor();
        auto scaled = [&](const Tensor& v) { return fs.defined() ? v * fs : (fixed != 1.0 ? v * fixed : v); };
        Tensor u;
        if (need_r || (need_s && r.defined())) {
          u = c.defined() ? p.mv(c) : p.sum(1);
          if (need_r) gr = scaled(u);
        }
        if (need_c) gc = scaled(r.defined() ? p.t().mv(r) : p.t().sum(1));
        if (need_s) {
          Tensor total = u.defined() ? r.dot(u) : (c.defined() ? c.dot(p.t().sum(1)) : p.sum());
          gs = (fixed == 1.0 ? total : total * fixed).reshape(s.sizes());
        }
      }
      if (need_w) gw = apply_factors(g, f, 0, /*in_place=*/true);
    }
    return {dx, gw, db, gs, gr, gc, Tensor()};
  }
};

bool fits(const std::optional<Tensor>& v, int64_t size, const Tensor& w) {
  return !v || (v->dim() == 1 && v->size(0) == size && v->scalar_type() == w.scalar_type() && v->device() == w.device());
}

// The call as the multiplied nn.Linear / Conv1D forward makes it: w as stored (row_dim 1: Conv1D's
// (in, out)), mode 0 weight side, 1 activation side, 2 auto (multipliers.Compute). Returns None
// for every call this op does not serve, which then takes the Python op: the activation side
// (chosen, or preferred by auto: tokens·(m + n) < m·n), autocast on, a non-2-D weight, and
// multipliers that do not fit the weight (the Python op raises the error that names the layer).
std::optional<Tensor> multiplied_linear(const Tensor& x, const Tensor& stored, const std::optional<Tensor>& b,
                                        const std::optional<Tensor>& s, const std::optional<Tensor>& r,
                                        const std::optional<Tensor>& c, double fixed, int64_t row_dim, int64_t mode) {
  if (stored.dim() != 2 || (row_dim != 0 && row_dim != 1) || mode == 1) return std::nullopt;
  if (at::autocast::is_autocast_enabled(x.device().type())) return std::nullopt;
  Tensor w = row_dim == 1 ? stored.t() : stored;
  int64_t m = w.size(0), n = w.size(1);
  if (s && (s->dim() > 1 || s->numel() != 1 || s->scalar_type() != w.scalar_type() || s->device() != w.device()))
    return std::nullopt;
  if (!fits(r, m, w) || !fits(c, n, w) || n == 0) return std::nullopt;
  if (mode == 2 && (x.numel() / n) * (m + n) < m * n) return std::nullopt;
  if (!at::GradMode::is_enabled())  // inference: the forward alone, no autograd node (as the Python op)
    return output(x, w, b.value_or(Tensor()), s.value_or(Tensor()), r.value_or(Tensor()), c.value_or(Tensor()), fixed);
  return MultipliedLinear::apply(x, w, b, s, r, c, fixed);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("multiplied_linear", &multiplied_linear,
        "y = x W_effᵀ + b, W_eff = f·s·diag(r)·W·diag(c), or None for a call the Python op must serve");
}
