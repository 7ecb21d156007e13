// Keel console: the playground. Streams a turn from /ui/api/chat (the events of /v1/chat),
// shows citations, tool calls, approvals and guard events, and sends feedback.
// Everything from the server is put in the page as text (textContent), never as HTML.
"use strict";

(function () {
  const root = document.getElementById("playground");
  if (!root) return;
  const csrf = document.querySelector('meta[name="keel-csrf"]').content;
  const canFeedback = root.dataset.feedback === "1";
  const canTraces = root.dataset.traces === "1";
  const messages = document.getElementById("messages");
  const form = document.getElementById("ask");
  const input = document.getElementById("message");
  const send = document.getElementById("send");
  const threadLabel = document.getElementById("thread-label");
  let threadId = null;
  let busy = false;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Keel-CSRF": csrf },
      body: JSON.stringify(body),
    });
  }

  async function problemText(response) {
    try {
      const body = await response.json();
      return body.detail || response.statusText;
    } catch (e) {
      return response.status + " " + response.statusText;
    }
  }

  function setThread(id) {
    threadId = id;
    threadLabel.textContent = id ? "thread " + id.slice(0, 12) : "new conversation";
  }

  function scroll() {
    messages.scrollTop = messages.scrollHeight;
  }

  function setBusy(on) {
    busy = on;
    send.disabled = on;
    input.disabled = on;
  }

  // -- one assistant message --------------------------------------------------------------
  function assistantBox() {
    const box = el("div", "msg assistant");
    const text = el("div", "text");
    const extras = el("div", "extras");
    box.append(text, extras);
    messages.append(box);
    return { box, text, extras, cites: null };
  }

  function addCitation(msg, c) {
    if (!msg.cites) {
      msg.cites = el("ol", "citations");
      msg.cites.setAttribute("aria-label", "Citations");
      msg.box.insertBefore(msg.cites, msg.extras);
    }
    const item = el("li");
    const link = el("a", "cite", "[" + c.n + "] " + (c.title || c.doc_id));
    link.href = "/ui/chunk?id=" + encodeURIComponent(c.chunk_id);
    link.dataset.chunk = c.chunk_id;
    link.addEventListener("click", (ev) => {
      ev.preventDefault();
      openChunk(c.chunk_id);
    });
    item.append(link, el("span", "muted", " " + c.source));
    msg.cites.append(item);
  }

  function addToolCall(msg, t) {
    const line = el("div", "tool " + (t.status || ""));
    line.append(el("span", "tag", "tool"));
    line.append(el("code", null, t.name + "(" + JSON.stringify(t.args || {}) + ")"));
    const outcome = t.status === "ok" ? t.content : t.error || t.status;
    if (outcome !== undefined && outcome !== null && outcome !== "") {
      line.append(el("span", "muted", " → " + (typeof outcome === "string" ? outcome : JSON.stringify(outcome))));
    }
    msg.extras.append(line);
  }

  function addGuard(msg, g) {
    const parts = [g.name || g.validator || "guard", g.point, g.outcome, g.action]
      .filter(Boolean)
      .join(" · ");
    const line = el("div", "guard");
    line.append(el("span", "tag", "guard"), el("span", null, parts));
    if (g.reason) line.append(el("span", "muted", " " + g.reason));
    msg.extras.append(line);
  }

  function addApproval(msg, thread, calls) {
    const box = el("div", "approval");
    box.append(el("strong", null, "Waiting for your approval"));
    for (const call of calls) {
      const row = el("div", "call");
      row.append(el("code", null, call.name + "(" + JSON.stringify(call.args || {}) + ")"));
      const approve = el("button", "primary approve", "Approve");
      const reject = el("button", "reject", "Reject");
      approve.type = reject.type = "button";
      const decide = async (action) => {
        approve.disabled = reject.disabled = true;
        const decision = {};
        decision[call.id] = { action: action, args_hash: call.args_hash };
        const response = await post("/ui/api/threads/" + encodeURIComponent(thread) + "/approvals", {
          decision: decision,
        });
        if (!response.ok) {
          row.append(el("span", "alert", await problemText(response)));
          approve.disabled = reject.disabled = false;
          return;
        }
        row.append(el("span", "muted", action === "approve" ? " approved" : " rejected"));
        const answer = await response.json();
        renderAnswer(answer);
      };
      approve.addEventListener("click", () => decide("approve"));
      reject.addEventListener("click", () => decide("reject"));
      row.append(approve, reject);
      box.append(row);
    }
    msg.extras.append(box);
  }

  function addFooter(msg, answer) {
    const foot = el("div", "foot");
    if (answer.trace_id && canTraces) {
      const link = el("a", "trace-link", "trace");
      link.href = "/ui/traces/" + encodeURIComponent(answer.trace_id);
      foot.append(link);
    } else if (answer.trace_id) {
      foot.append(el("span", "muted", "trace " + answer.trace_id.slice(0, 12)));
    }
    const usage = answer.usage || {};
    if (usage.total_tokens) foot.append(el("span", "muted", usage.total_tokens + " tokens"));
    if (answer.stop_reason && answer.stop_reason !== "done") {
      foot.append(el("span", "muted", "stopped: " + answer.stop_reason));
    }
    if (canFeedback && answer.trace_id && answer.stop_reason !== "approval_required") {
      foot.append(feedbackWidget(answer));
    }
    msg.box.append(foot);
  }

  function feedbackWidget(answer) {
    const wrap = el("div", "feedback");
    const up = el("button", "thumb up", "✓ Good");
    const down = el("button", "thumb down", "✗ Bad");
    up.type = down.type = "button";
    up.title = "Good answer";
    down.title = "Bad answer";
    up.setAttribute("aria-label", "Good answer");
    down.setAttribute("aria-label", "Bad answer");
    const comment = el("input", "comment");
    comment.type = "text";
    comment.placeholder = "Comment (optional)";
    comment.maxLength = 10000;
    const submit = el("button", "send-feedback", "Send feedback");
    submit.type = "button";
    let score = null;
    const pick = (value) => {
      score = value;
      up.classList.toggle("on", value === 1);
      down.classList.toggle("on", value === 0);
    };
    up.addEventListener("click", () => pick(1));
    down.addEventListener("click", () => pick(0));
    submit.addEventListener("click", async () => {
      if (score === null) {
        comment.focus();
        submit.textContent = "Pick Good or Bad first";
        return;
      }
      submit.disabled = true;
      const body = { trace_id: answer.trace_id, score: score, thread_id: answer.thread_id };
      if (comment.value.trim()) body.comment = comment.value.trim();
      const response = await post("/ui/api/feedback", body);
      if (response.ok) {
        wrap.replaceChildren(el("span", "saved", "Feedback saved, thank you."));
      } else {
        submit.disabled = false;
        wrap.append(el("span", "alert", await problemText(response)));
      }
    });
    wrap.append(up, down, comment, submit);
    return wrap;
  }

  // A whole answer (JSON), e.g. after an approval.
  function renderAnswer(answer) {
    const msg = assistantBox();
    msg.text.textContent = answer.text || "";
    for (const t of answer.tool_calls || []) addToolCall(msg, t);
    for (const g of answer.events || []) if (g.outcome === "fail") addGuard(msg, g);
    for (const c of answer.citations || []) addCitation(msg, c);
    if (answer.pending_approval) addApproval(msg, answer.thread_id, answer.pending_approval);
    addFooter(msg, answer);
    if (answer.thread_id) setThread(answer.thread_id);
    scroll();
  }

  // -- streaming ------------------------------------------------------------------------------
  function parseEvents(buffer, handle) {
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let kind = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length) handle(kind, JSON.parse(data.join("\n")));
    }
    return buffer;
  }

  async function ask(question) {
    const user = el("div", "msg user");
    user.append(el("div", "text", question));
    messages.append(user);
    const msg = assistantBox();
    msg.box.classList.add("streaming");
    scroll();
    const response = await post("/ui/api/chat", { message: question, thread_id: threadId });
    if (!response.ok) {
      msg.box.classList.remove("streaming");
      msg.text.append(el("span", "alert", await problemText(response)));
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const handle = (kind, data) => {
      if (kind === "token") msg.text.textContent += data.text;
      else if (kind === "citation") addCitation(msg, data);
      else if (kind === "tool_call") addToolCall(msg, data);
      else if (kind === "guardrail") addGuard(msg, data);
      else if (kind === "approval_required") addApproval(msg, data.thread_id, data.calls);
      else if (kind === "error") msg.extras.append(el("div", "alert", data.detail));
      else if (kind === "done") {
        if (!msg.text.textContent && data.text) msg.text.textContent = data.text;
        setThread(data.thread_id);
        addFooter(msg, data);
        msg.box.classList.remove("streaming");
        msg.box.classList.add("done");
      }
      scroll();
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer = parseEvents(buffer + decoder.decode(value, { stream: true }), handle);
    }
    msg.box.classList.remove("streaming");
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const question = input.value.trim();
    if (!question || busy) return;
    input.value = "";
    setBusy(true);
    try {
      await ask(question);
    } catch (e) {
      messages.append(el("div", "alert", "The request failed: " + e));
    } finally {
      setBusy(false);
      input.focus();
    }
  });

  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });

  document.getElementById("new-chat").addEventListener("click", () => {
    setThread(null);
    messages.replaceChildren();
    input.focus();
  });

  // -- the cited passage ------------------------------------------------------------------
  const panel = document.getElementById("chunk-panel");
  async function openChunk(id) {
    const response = await fetch("/ui/api/chunk?id=" + encodeURIComponent(id), {
      credentials: "same-origin",
    });
    panel.hidden = false;
    if (!response.ok) {
      document.getElementById("chunk-title").textContent = "Passage not found";
      document.getElementById("chunk-source").textContent = await problemText(response);
      document.getElementById("chunk-text").textContent = "";
      return;
    }
    const c = await response.json();
    document.getElementById("chunk-title").textContent = c.title || c.doc_id;
    const where = [c.source].concat(c.headings && c.headings.length ? [c.headings.join(" › ")] : []);
    if (c.page) where.push("page " + c.page);
    document.getElementById("chunk-source").textContent = where.join(" · ");
    document.getElementById("chunk-text").textContent = c.text;
  }
  document.getElementById("chunk-close").addEventListener("click", () => {
    panel.hidden = true;
  });
})();
