#include "workflows/when.h"

#include <cctype>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace epoch::workflows {

namespace {

constexpr int kMaxDepth = 32;

enum class Op { kEq, kNe, kLt, kLe, kGt, kGe };

enum class TokKind { kEnd, kLParen, kRParen, kAnd, kOr, kNot, kCmp, kNumber, kString, kWord };

struct Token {
  TokKind kind = TokKind::kEnd;
  size_t pos = 0;     // byte offset in the source
  Op op = Op::kEq;    // kCmp
  double number = 0;  // kNumber
  std::string text;   // kString: the unescaped value; kWord: the word
};

std::string At(size_t pos) { return " at column " + std::to_string(pos + 1); }

Status Unparsable(const std::string& why, size_t pos) {
  return InvalidArgument("unparsable expression: " + why + At(pos));
}

bool IsWordStart(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool IsWordChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
}
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// The character at s[i] for a message: the whole UTF-8 sequence when it is a printable
// one (messages must stay valid UTF-8: the API sends them as JSON), else the byte in hex.
std::string CharAt(std::string_view s, size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  size_t len = Utf8SequenceLength(s, i);
  if (len == 0 || b < 0x20 || b == 0x7F) {
    static const char kHex[] = "0123456789abcdef";
    return std::string("byte 0x") + kHex[b >> 4] + kHex[b & 15];
  }
  return "'" + std::string(s.substr(i, len)) + "'";
}

Result<std::vector<Token>> Tokenize(std::string_view s) {
  std::vector<Token> out;
  size_t i = 0;
  while (true) {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    Token t;
    t.pos = i;
    if (i == s.size()) {
      out.push_back(t);
      return out;
    }
    char c = s[i];
    char n = i + 1 < s.size() ? s[i + 1] : '\0';
    if (c == '(') {
      t.kind = TokKind::kLParen;
      ++i;
    } else if (c == ')') {
      t.kind = TokKind::kRParen;
      ++i;
    } else if (c == '&' && n == '&') {
      t.kind = TokKind::kAnd;
      i += 2;
    } else if (c == '|' && n == '|') {
      t.kind = TokKind::kOr;
      i += 2;
    } else if (c == '!' && n == '=') {
      t.kind = TokKind::kCmp;
      t.op = Op::kNe;
      i += 2;
    } else if (c == '!') {
      t.kind = TokKind::kNot;
      ++i;
    } else if (c == '=' && n == '=') {
      t.kind = TokKind::kCmp;
      t.op = Op::kEq;
      i += 2;
    } else if (c == '<' || c == '>') {
      t.kind = TokKind::kCmp;
      bool eq = n == '=';
      t.op = c == '<' ? (eq ? Op::kLe : Op::kLt) : (eq ? Op::kGe : Op::kGt);
      i += eq ? 2 : 1;
    } else if (c == '=') {
      return Unparsable("unexpected '=' (use '==')", i);
    } else if (c == '&' || c == '|') {
      return Unparsable(std::string("unexpected '") + c + "' (use '" + c + c + "')", i);
    } else if (c == '\'' || c == '"') {
      t.kind = TokKind::kString;
      size_t j = i + 1;
      bool closed = false;
      while (j < s.size()) {
        if (s[j] == '\\' && j + 1 < s.size()) {
          t.text += s[j + 1];
          j += 2;
        } else if (s[j] == c) {
          closed = true;
          ++j;
          break;
        } else {
          t.text += s[j++];
        }
      }
      if (!closed) return Unparsable("unterminated string", i);
      i = j;
    } else if (IsDigit(c) || ((c == '-' || c == '.') && (IsDigit(n) || n == '.'))) {
      // JSON-like number: -?digits(.digits)?([eE][+-]?digits)?
      size_t j = i;
      if (s[j] == '-') ++j;
      size_t digits = 0;
      while (j < s.size() && IsDigit(s[j])) ++j, ++digits;
      if (j < s.size() && s[j] == '.') {
        ++j;
        while (j < s.size() && IsDigit(s[j])) ++j, ++digits;
      }
      if (digits == 0) return Unparsable("malformed number", i);
      if (j < s.size() && (s[j] == 'e' || s[j] == 'E')) {
        size_t k = j + 1;
        if (k < s.size() && (s[k] == '+' || s[k] == '-')) ++k;
        size_t exp_digits = 0;
        while (k < s.size() && IsDigit(s[k])) ++k, ++exp_digits;
        if (exp_digits == 0) return Unparsable("malformed number", i);
        j = k;
      }
      if (j < s.size() && IsWordChar(s[j])) return Unparsable("malformed number", i);
      t.kind = TokKind::kNumber;
      t.number = std::strtod(std::string(s.substr(i, j - i)).c_str(), nullptr);
      i = j;
    } else if (IsWordStart(c)) {
      size_t j = i;
      while (j < s.size() && IsWordChar(s[j])) ++j;
      t.kind = TokKind::kWord;
      t.text = std::string(s.substr(i, j - i));
      i = j;
    } else {
      return Unparsable("unexpected character " + CharAt(s, i), i);
    }
    out.push_back(std::move(t));
  }
}

}  // namespace

// A chain "a && b && c" is one kAnd node with three args, not a left-deep tree: an
// expression may be as long as a request body, and only its parentheses and '!'s
// (at most kMaxDepth) make the tree deeper, so evaluating and destroying it never
// recurse deeper than that.
struct WhenExpr::Node {
  enum class Kind { kConst, kNot, kAnd, kOr, kCompare };
  struct Operand {
    int ref = -1;  // index into WhenExpr::refs_, or -1 for a literal
    Json literal;
  };
  Kind kind = Kind::kConst;
  bool value = false;                       // kConst
  std::vector<std::unique_ptr<Node>> args;  // kNot: one; kAnd, kOr: two or more
  Op op = Op::kEq;                          // kCompare
  Operand a, b;                             // kCompare
};

// Recursive descent over the token list; fills expr->refs_ as it goes.
class WhenParser {
 public:
  WhenParser(std::vector<Token> tokens, WhenExpr* expr) : toks_(std::move(tokens)), expr_(expr) {}

  Result<std::unique_ptr<WhenExpr::Node>> ParseAll() {
    ASSIGN_OR_RETURN(auto root, ParseOr(0));
    if (Peek().kind != TokKind::kEnd)
      return Unparsable("unexpected " + Describe(Peek()), Peek().pos);
    return root;
  }

 private:
  using Node = WhenExpr::Node;
  using NodePtr = std::unique_ptr<Node>;

  const Token& Peek(size_t ahead = 0) const {
    size_t i = std::min(pos_ + ahead, toks_.size() - 1);
    return toks_[i];
  }
  const Token& Next() {
    const Token& t = Peek();
    if (pos_ < toks_.size() - 1) ++pos_;
    return t;
  }

  static std::string Describe(const Token& t) {
    switch (t.kind) {
      case TokKind::kEnd:
        return "end of expression";
      case TokKind::kLParen:
        return "'('";
      case TokKind::kRParen:
        return "')'";
      case TokKind::kAnd:
        return "'&&'";
      case TokKind::kOr:
        return "'||'";
      case TokKind::kNot:
        return "'!'";
      case TokKind::kCmp:
        return "comparison operator";
      case TokKind::kNumber:
        return "number";
      case TokKind::kString:
        return "string";
      case TokKind::kWord:
        return "'" + t.text + "'";
    }
    return "token";
  }

  // operand ( sep operand )*: the operand alone, or one `kind` node over all of them.
  template <typename ParseOperandFn>
  Result<NodePtr> Chain(Node::Kind kind, TokKind sep, ParseOperandFn parse) {
    ASSIGN_OR_RETURN(NodePtr first, parse());
    if (Peek().kind != sep) return first;
    auto n = std::make_unique<Node>();
    n->kind = kind;
    n->args.push_back(std::move(first));
    while (Peek().kind == sep) {
      Next();
      ASSIGN_OR_RETURN(NodePtr next, parse());
      n->args.push_back(std::move(next));
    }
    return n;
  }

  Result<NodePtr> ParseOr(int depth) {
    return Chain(Node::Kind::kOr, TokKind::kOr, [&] { return ParseAnd(depth); });
  }

  Result<NodePtr> ParseAnd(int depth) {
    return Chain(Node::Kind::kAnd, TokKind::kAnd, [&] { return ParseUnary(depth); });
  }

  Result<NodePtr> ParseUnary(int depth) {
    if (depth > kMaxDepth) return Unparsable("nested too deeply", Peek().pos);
    if (Peek().kind == TokKind::kNot) {
      Next();
      ASSIGN_OR_RETURN(NodePtr inner, ParseUnary(depth + 1));
      auto n = std::make_unique<Node>();
      n->kind = Node::Kind::kNot;
      n->args.push_back(std::move(inner));
      return n;
    }
    return ParsePrimary(depth);
  }

  Result<NodePtr> ParsePrimary(int depth) {
    const Token& t = Peek();
    if (t.kind == TokKind::kLParen) {
      Next();
      ASSIGN_OR_RETURN(NodePtr inner, ParseOr(depth + 1));
      if (Peek().kind != TokKind::kRParen) {
        return Unparsable("expected ')' but found " + Describe(Peek()), Peek().pos);
      }
      Next();
      return inner;
    }
    bool is_bool = t.kind == TokKind::kWord && (t.text == "true" || t.text == "false");
    if (is_bool && Peek(1).kind != TokKind::kCmp) {
      Next();
      auto n = std::make_unique<Node>();
      n->kind = Node::Kind::kConst;
      n->value = t.text == "true";
      return n;
    }
    auto n = std::make_unique<Node>();
    n->kind = Node::Kind::kCompare;
    ASSIGN_OR_RETURN(n->a, ParseOperand());
    if (Peek().kind != TokKind::kCmp) {
      return Unparsable(
          "expected a comparison operator (==, !=, <, <=, >, >=) but found " + Describe(Peek()),
          Peek().pos);
    }
    n->op = Next().op;
    ASSIGN_OR_RETURN(n->b, ParseOperand());
    return n;
  }

  Result<Node::Operand> ParseOperand() {
    const Token& t = Peek();
    Node::Operand o;
    switch (t.kind) {
      case TokKind::kNumber:
        o.literal = t.number;
        Next();
        return o;
      case TokKind::kString:
        o.literal = t.text;
        Next();
        return o;
      case TokKind::kWord: {
        if (t.text == "true" || t.text == "false") {
          o.literal = t.text == "true";
          Next();
          return o;
        }
        ASSIGN_OR_RETURN(WhenExpr::Ref ref, ParseRef(t));
        o.ref = static_cast<int>(expr_->refs_.size());
        expr_->refs_.push_back(std::move(ref));
        Next();
        return o;
      }
      default:
        return Unparsable(
            "expected a value (steps.<step>.metrics.<key>, params.<name>, a number "
            "or a string) but found " +
                Describe(t),
            t.pos);
    }
  }

  static Result<WhenExpr::Ref> ParseRef(const Token& t) {
    const std::string& w = t.text;
    WhenExpr::Ref ref;
    ref.text = w;
    constexpr std::string_view kParams = "params.";
    constexpr std::string_view kSteps = "steps.";
    constexpr std::string_view kMetrics = ".metrics.";
    if (w.starts_with(kParams) && w.size() > kParams.size()) {
      ref.kind = WhenExpr::Ref::Kind::kParam;
      ref.key = w.substr(kParams.size());
      if (ref.key.find('.') == std::string::npos) return ref;
    } else if (w.starts_with(kSteps)) {
      size_t m = w.find(kMetrics, kSteps.size());
      if (m != std::string::npos && m > kSteps.size() && m + kMetrics.size() < w.size()) {
        ref.kind = WhenExpr::Ref::Kind::kMetric;
        ref.step = w.substr(kSteps.size(), m - kSteps.size());
        ref.key = w.substr(m + kMetrics.size());
        if (ref.step.find('.') == std::string::npos) return ref;
      }
    }
    return Unparsable("unknown name '" + w +
                          "' (expected steps.<step>.metrics.<key>, params.<name>, true or false)",
                      t.pos);
  }

  std::vector<Token> toks_;
  size_t pos_ = 0;
  WhenExpr* expr_;
};

namespace {

std::optional<Json> Lookup(const WhenExpr::Ref& ref, const Json& params, const Json& steps) {
  const Json* v = nullptr;
  if (ref.kind == WhenExpr::Ref::Kind::kParam) {
    if (!params.is_object()) return std::nullopt;
    auto it = params.find(ref.key);
    if (it == params.end()) return std::nullopt;
    v = &*it;
  } else {
    if (!steps.is_object()) return std::nullopt;
    auto s = steps.find(ref.step);
    if (s == steps.end() || !s->is_object()) return std::nullopt;
    auto m = s->find("metrics");
    if (m == s->end() || !m->is_object()) return std::nullopt;
    auto it = m->find(ref.key);
    if (it == m->end()) return std::nullopt;
    v = &*it;
  }
  if (v->is_null()) return std::nullopt;
  return *v;
}

template <typename T>
bool Order(Op op, const T& a, const T& b) {
  switch (op) {
    case Op::kEq:
      return a == b;
    case Op::kNe:
      return a != b;
    case Op::kLt:
      return a < b;
    case Op::kLe:
      return a <= b;
    case Op::kGt:
      return a > b;
    case Op::kGe:
      return a >= b;
  }
  return false;
}

bool Compare(Op op, const Json& a, const Json& b) {
  if (a.is_number() && b.is_number()) return Order(op, a.get<double>(), b.get<double>());
  if (a.is_string() && b.is_string()) {
    return Order(op, a.get_ref<const std::string&>(), b.get_ref<const std::string&>());
  }
  if (a.is_boolean() && b.is_boolean()) {
    if (op == Op::kEq) return a.get<bool>() == b.get<bool>();
    if (op == Op::kNe) return a.get<bool>() != b.get<bool>();
    return false;
  }
  // Different (or non-scalar) types are never equal and have no order.
  return op == Op::kNe;
}

}  // namespace

WhenExpr::WhenExpr() = default;
WhenExpr::~WhenExpr() = default;

Result<std::shared_ptr<const WhenExpr>> WhenExpr::Parse(std::string_view text) {
  ASSIGN_OR_RETURN(std::vector<Token> tokens, Tokenize(text));
  if (tokens.size() == 1) return Unparsable("empty expression", 0);
  std::shared_ptr<WhenExpr> expr(new WhenExpr());
  expr->text_ = std::string(text);
  WhenParser parser(std::move(tokens), expr.get());
  ASSIGN_OR_RETURN(expr->root_, parser.ParseAll());
  return std::shared_ptr<const WhenExpr>(std::move(expr));
}

namespace {

bool Eval(const WhenExpr::Node& n, const std::vector<WhenExpr::Ref>& refs, const Json& params,
          const Json& steps) {
  using Kind = WhenExpr::Node::Kind;
  switch (n.kind) {
    case Kind::kConst:
      return n.value;
    case Kind::kNot:
      return !Eval(*n.args.front(), refs, params, steps);
    case Kind::kAnd:
      for (const auto& arg : n.args) {
        if (!Eval(*arg, refs, params, steps)) return false;
      }
      return true;
    case Kind::kOr:
      for (const auto& arg : n.args) {
        if (Eval(*arg, refs, params, steps)) return true;
      }
      return false;
    case Kind::kCompare: {
      auto value = [&](const WhenExpr::Node::Operand& o) -> std::optional<Json> {
        if (o.ref < 0) return o.literal;
        return Lookup(refs[static_cast<size_t>(o.ref)], params, steps);
      };
      std::optional<Json> a = value(n.a);
      std::optional<Json> b = value(n.b);
      // A value that is not there (metric not reported) makes the comparison false.
      if (!a || !b) return false;
      return Compare(n.op, *a, *b);
    }
  }
  return false;
}

}  // namespace

bool WhenExpr::Evaluate(const Json& params, const Json& steps) const {
  return Eval(*root_, refs_, params, steps);
}

}  // namespace epoch::workflows
