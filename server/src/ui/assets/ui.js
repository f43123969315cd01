// Outpost dashboard: live updates (EventSource on the dashboard's own streams, which the
// session cookie authenticates), live output with ANSI colours, and small form helpers.
// Everything a server or an agent sent reaches the page through textContent or element
// attributes set one by one, never innerHTML. No inline script: the CSP forbids it.
"use strict";

(function () {
  // ---- forms ---------------------------------------------------------------------------
  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    var question = button && button.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-copy]");
    if (!button) return;
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) return;
    var text = source.textContent;
    var done = function () { button.textContent = "Copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { select(source); });
    } else {
      select(source);
      try { if (document.execCommand("copy")) done(); } catch (e) { /* selected: the user copies */ }
    }
  });
  function select(node) {
    var range = document.createRange();
    range.selectNodeContents(node);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function liveState(ok) {
    var badge = document.getElementById("live-state");
    if (!badge) return;
    badge.textContent = ok ? "live" : "reconnecting";
    badge.classList.toggle("down", !ok);
  }

  // ---- schedule form: the next fires while the pattern is typed --------------------------
  var cron = document.getElementById("schedule-cron");
  var zone = document.getElementById("schedule-timezone");
  var fireList = document.getElementById("schedule-fire-list");
  if (cron && zone && fireList && cron.dataset.preview && window.fetch) {
    var timer = null;
    var asked = 0;
    var heading = document.querySelector("#schedule-fires h2");
    var refresh = function () {
      var mine = ++asked;
      var url = cron.dataset.preview + "?cron=" + encodeURIComponent(cron.value) +
        "&timezone=" + encodeURIComponent(zone.value);
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) { return response.json(); })
        .then(function (answer) {
          if (mine !== asked) return;
          var items = document.createDocumentFragment();
          if (answer.error) {
            items.appendChild(el("li", "error", answer.error));
          } else {
            (answer.fires || []).forEach(function (fire) { items.appendChild(el("li", null, fire)); });
          }
          fireList.replaceChildren(items);
          if (heading) heading.textContent = "Next fires (" + zone.value + ")";
        })
        .catch(function () { /* the Preview button still works */ });
    };
    var later = function () { clearTimeout(timer); timer = setTimeout(refresh, 250); };
    cron.addEventListener("input", later);
    zone.addEventListener("input", later);
    zone.addEventListener("change", later);
  }

  // ---- agents page -----------------------------------------------------------------------
  var agents = document.getElementById("agents");
  if (agents && agents.dataset.stream && window.EventSource) {
    var base = document.body.dataset.base;
    var source = new EventSource(agents.dataset.stream);
    source.addEventListener("open", function () { liveState(true); });
    source.addEventListener("error", function () { liveState(false); });
    source.addEventListener("agents", function (event) {
      liveState(true);
      var page;
      try { page = JSON.parse(event.data); } catch (e) { return; }
      var body = document.createDocumentFragment();
      (page.rows || []).forEach(function (row) {
        var tr = el("tr");
        tr.setAttribute("data-id", row.id);
        var status = el("td");
        status.appendChild(el("span", "status " + (row.status === "online" ? "online" : "offline"), row.status));
        tr.appendChild(status);
        var name = el("td");
        var link = el("a", null, row.hostname);
        link.href = base + "/agents/" + encodeURIComponent(row.id);
        name.appendChild(link);
        tr.appendChild(name);
        var tags = el("td");
        (row.tags || []).forEach(function (tag) {
          tags.appendChild(el("span", "tag", tag));
          tags.appendChild(document.createTextNode(" "));
        });
        tr.appendChild(tags);
        ["version", "heartbeat", "cpu", "memory", "disk"].forEach(function (field) {
          tr.appendChild(el("td", null, row[field]));
        });
        body.appendChild(tr);
      });
      agents.replaceChildren(body);
      var set = function (id, value) {
        var node = document.getElementById(id);
        if (node) node.textContent = String(value);
      };
      set("agents-total", page.total);
      set("agents-page", page.page);
      set("agents-pages", page.pages);
      var empty = document.getElementById("agents-empty");
      if (empty) empty.hidden = (page.rows || []).length > 0;
    });
  }

  // ---- ANSI -------------------------------------------------------------------------------
  // One converter per run and stream: colours carry over chunks, and an escape sequence split
  // across two chunks is completed by the next one. Only SGR (colours, bold, italic,
  // underline) is kept, as classes; every other sequence (cursor moves, window titles,
  // hyperlinks) and control character is dropped.
  var ESCAPE = /\x1b(?:\[([0-9;:?]*)[ -\/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[P^_X][^\x1b]*\x1b\\|[ -\/]*[0-~])/g;
  var PARTIAL = /\x1b(?:\[[0-9;:?]*[ -\/]*|\][^\x07\x1b]*\x1b?|[P^_X][^\x1b]*\x1b?|[ -\/]*)?$/;
  var CONTROLS = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g;

  function Ansi() { this.carry = ""; this.fg = 0; this.bg = 0; this.bold = false; this.italic = false; this.underline = false; }
  Ansi.prototype.classes = function () {
    var list = [];
    if (this.bold) list.push("a-b");
    if (this.italic) list.push("a-i");
    if (this.underline) list.push("a-u");
    if (this.fg) list.push("f" + this.fg);
    if (this.bg) list.push("b" + this.bg);
    return list.join(" ");
  };
  Ansi.prototype.sgr = function (params) {
    var codes = params === "" ? [0] : params.split(/[;:]/).map(function (c) { return c === "" ? 0 : parseInt(c, 10); });
    for (var i = 0; i < codes.length; i++) {
      var c = codes[i];
      if (c === 0) { this.fg = 0; this.bg = 0; this.bold = this.italic = this.underline = false; }
      else if (c === 1) this.bold = true;
      else if (c === 3) this.italic = true;
      else if (c === 4) this.underline = true;
      else if (c === 22) this.bold = false;
      else if (c === 23) this.italic = false;
      else if (c === 24) this.underline = false;
      else if ((c >= 30 && c <= 37) || (c >= 90 && c <= 97)) this.fg = c;
      else if (c === 39) this.fg = 0;
      else if (c >= 40 && c <= 47) this.bg = c;
      else if (c >= 100 && c <= 107) this.bg = c - 60;
      else if (c === 49) this.bg = 0;
      else if (c === 38 || c === 48) {
        // 256 colours: the first 16 map to classes; the rest, and RGB, are left plain.
        if (codes[i + 1] === 5) {
          var n = codes[i + 2];
          if (n >= 0 && n < 16) {
            var v = n < 8 ? n : n - 8;
            if (c === 38) this.fg = (n < 8 ? 30 : 90) + v; else this.bg = 40 + v;
          }
          i += 2;
        } else if (codes[i + 1] === 2) {
          i += 4;
        }
      }
    }
  };
  // Text -> [[text, classes], …], keeping what may be the start of a sequence for later.
  Ansi.prototype.convert = function (text) {
    text = this.carry + text;
    this.carry = "";
    var partial = PARTIAL.exec(text);
    if (partial && partial[0].length > 0 && partial[0].length < 256) {
      this.carry = partial[0];
      text = text.slice(0, partial.index);
    }
    var out = [];
    var self = this;
    var last = 0;
    var plain = function (part) {
      part = part.replace(/\r\n/g, "\n").replace(/\r/g, "\n").replace(CONTROLS, "");
      if (part) out.push([part, self.classes()]);
    };
    ESCAPE.lastIndex = 0;
    var m;
    while ((m = ESCAPE.exec(text)) !== null) {
      plain(text.slice(last, m.index));
      if (m[2] === "m") this.sgr(m[1] || "");
      last = ESCAPE.lastIndex;
    }
    plain(text.slice(last));
    return out;
  };

  // ---- one job's runs ----------------------------------------------------------------------
  var MAX_LINES = 5000;
  var MAX_CHARS = 1024 * 1024;
  var EARLIER_BYTES = 64 * 1024;
  var RESYNC_BYTES = 256 * 1024;
  // Queued output beyond this is left out unseen (see Run.prototype.output).
  var QUEUE_KEEP = 1024 * 1024;
  // Milliseconds of output work at a time before the page handles anything else.
  var FLUSH_MS = 8;

  function countLines(text) {
    var n = 0;
    for (var i = text.indexOf("\n"); i !== -1; i = text.indexOf("\n", i + 1)) n++;
    return n;
  }

  // The length of what `b64` encodes, without decoding it.
  function b64length(b64) {
    var pad = b64.endsWith("==") ? 2 : b64.endsWith("=") ? 1 : 0;
    return Math.floor(b64.length / 4) * 3 - pad;
  }
  function b64bytes(b64) {
    var raw = atob(b64);
    var bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

  function Run(section, outputBase) {
    this.section = section;
    this.id = section.dataset.run;
    this.pre = section.querySelector("pre.output");
    this.follow = section.querySelector("input.follow");
    this.earlierButton = section.querySelector("button.earlier");
    this.url = outputBase + encodeURIComponent(this.id) + "/output";
    this.decoders = [new TextDecoder("utf-8"), new TextDecoder("utf-8")];
    this.ansi = [new Ansi(), new Ansi()];
    this.lines = 0;
    this.chars = 0;
    this.dropped = 0;       // bytes of output before the first one in the page
    this.receivedTotal = 0; // bytes of output the server has sent or skipped
    this.cutTail = false;   // newest output left out (after loading earlier output)
    this.pending = null;
    this.queue = [];        // [err, base64, bytes] not shown yet
    this.queued = 0;        // their bytes
    this.flushQueued = false;
    var self = this;
    var pre = this.pre;
    var atBottom = function () { return pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4; };
    // Following stops when the reader moves up (wheel, touch, keys), not when output moves the
    // view, and resumes at the bottom or with the checkbox.
    var up = function () { if (!atBottom() || pre.scrollTop > 0) self.follow.checked = false; };
    pre.addEventListener("wheel", function (event) { if (event.deltaY < 0) up(); }, { passive: true });
    pre.addEventListener("touchmove", up, { passive: true });
    pre.addEventListener("keydown", function (event) {
      if (["ArrowUp", "PageUp", "Home"].indexOf(event.key) >= 0) up();
    });
    pre.addEventListener("scroll", function () {
      if (!self.follow.checked && atBottom() && pre.scrollTop > 0) self.resume();
    });
    this.follow.addEventListener("change", function () { if (self.follow.checked) self.resume(); });
    this.earlierButton.addEventListener("click", function () { self.earlier(); });
  }
  Run.prototype.resume = function () {
    this.follow.checked = true;
    if (this.cutTail) this.resync(); else this.scroll();
  };
  // A block of output as one element holding its spans; `bytes` is how much output it is.
  Run.prototype.block = function (parts, bytes, extraClass) {
    var block = el("span", "chunk" + (extraClass ? " " + extraClass : ""));
    var lines = 0, chars = 0;
    parts.forEach(function (part) {
      block.appendChild(el("span", part[1] || null, part[0]));
      lines += countLines(part[0]);
      chars += part[0].length;
    });
    block._bytes = bytes;
    block._lines = lines;
    block._chars = chars;
    this.lines += lines;
    this.chars += chars;
    return block;
  };
  // At most once a frame: reading scrollHeight lays the output out, which for a long line is
  // the costly part of a chunk.
  Run.prototype.scroll = function () {
    var self = this;
    if (!this.follow.checked || this.scrollQueued) return;
    this.scrollQueued = true;
    window.requestAnimationFrame(function () {
      self.scrollQueued = false;
      if (self.follow.checked) self.pre.scrollTop = self.pre.scrollHeight;
    });
  };
  Run.prototype.remove = function (block) {
    this.lines -= block._lines || 0;
    this.chars -= block._chars || 0;
    block.remove();
  };
  // Keeps the page to MAX_LINES lines (and MAX_CHARS characters: one endless line), dropping
  // the oldest output, or the newest after earlier output was loaded (`fromEnd`).
  Run.prototype.trim = function (fromEnd) {
    var pre = this.pre;
    while ((this.lines > MAX_LINES || this.chars > MAX_CHARS) && pre.childNodes.length > 1) {
      if (fromEnd) {
        var last = pre.lastChild;
        this.remove(last);
        this.cutTail = true;
      } else {
        var first = pre.firstChild;
        var height = pre.scrollHeight;
        this.dropped += first._bytes || 0;
        this.remove(first);
        // A reader scrolled up keeps their place.
        if (!this.follow.checked) pre.scrollTop -= height - pre.scrollHeight;
      }
    }
    this.earlierButton.hidden = this.dropped <= 0;
  };
  // Output as it arrives is queued, and shown a few milliseconds of work at a time, so that
  // the page answers between them however fast output comes (a run printing 100 MB sends
  // thousands of chunks). When the queue alone holds more than the page keeps, what is in
  // the page and the queue's oldest chunks would all be trimmed: they are left out unseen,
  // as earlier output to load by byte range.
  Run.prototype.output = function (err, b64) {
    var n = b64length(b64);
    this.receivedTotal += n;
    if (this.pending) { this.pending.push([err, b64bytes(b64)]); return; }
    if (this.cutTail) return; // shown again by resync()
    this.queue.push([err, b64, n]);
    this.queued += n;
    if (this.queued > QUEUE_KEEP) this.skipAhead();
    this.schedule();
  };
  Run.prototype.skipAhead = function () {
    var keep = 0, i = this.queue.length;
    while (i > 0 && keep < QUEUE_KEEP) { i--; keep += this.queue[i][2]; }
    if (i === 0) return;
    this.queue = this.queue.slice(i);
    this.queued = keep;
    this.pre.replaceChildren();
    this.lines = this.chars = 0;
    this.dropped = this.receivedTotal - keep;
    this.decoders = [new TextDecoder("utf-8"), new TextDecoder("utf-8")];
    this.ansi = [new Ansi(), new Ansi()];
    this.earlierButton.hidden = this.dropped <= 0;
  };
  Run.prototype.schedule = function () {
    if (this.flushQueued) return;
    this.flushQueued = true;
    var self = this;
    setTimeout(function () { self.flushQueued = false; self.flush(FLUSH_MS); }, 0);
  };
  // Shows queued output for at most `budget` ms (0: all of it).
  Run.prototype.flush = function (budget) {
    var start = performance.now();
    while (this.queue.length && (budget === 0 || performance.now() - start < budget)) {
      var item = this.queue.shift();
      this.queued -= item[2];
      this.append(item[0], b64bytes(item[1]));
    }
    if (this.queue.length) this.schedule();
  };
  Run.prototype.append = function (err, bytes) {
    if (this.cutTail) return; // shown again by resync()
    var stream = err ? 1 : 0;
    var text = this.decoders[stream].decode(bytes, { stream: true });
    var parts = this.ansi[stream].convert(text);
    this.pre.appendChild(this.block(parts, bytes.length, err ? "err" : ""));
    this.trim(false);
    this.scroll();
  };
  Run.prototype.skipped = function (bytes) {
    this.dropped = bytes;
    this.receivedTotal = bytes;
    this.earlierButton.hidden = bytes <= 0;
    var note = el("span", "note", "(" + bytes + " bytes of earlier output not shown)\n");
    note._bytes = 0;
    note._lines = 1;
    note._chars = 0;
    this.lines += 1;
    this.pre.appendChild(note);
  };
  function fetchRange(url, offset, len) {
    return fetch(url + "?offset=" + offset + "&len=" + len, { credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.arrayBuffer();
      });
  }
  // Earlier output, by byte range: both streams as they arrived, each part marked with its
  // stream by the server, so that stderr shows as it does live.
  Run.prototype.earlier = function () {
    var self = this;
    var len = Math.min(EARLIER_BYTES, this.dropped);
    var offset = this.dropped - len;
    if (len <= 0) return;
    this.earlierButton.disabled = true;
    fetch(this.url + "?offset=" + offset + "&len=" + len + "&parts=1", { credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (answer) {
        var decoders = [new TextDecoder("utf-8"), new TextDecoder("utf-8")];
        var ansi = [new Ansi(), new Ansi()];
        var blocks = document.createDocumentFragment();
        (answer.parts || []).forEach(function (part) {
          var stream = part.err ? 1 : 0;
          var bytes = b64bytes(part.b64);
          var text = decoders[stream].decode(bytes, { stream: true });
          blocks.appendChild(self.block(ansi[stream].convert(text), bytes.length,
            "earlier-part" + (part.err ? " err" : "")));
        });
        var note = self.pre.querySelector(".note");
        if (note) self.remove(note);
        self.pre.insertBefore(blocks, self.pre.firstChild);
        self.dropped = offset;
        self.follow.checked = false;
        self.pre.scrollTop = 0;
        self.trim(true);
      }).catch(function () { /* the button stays for another try */ }).then(function () {
        self.earlierButton.disabled = false;
        self.earlierButton.hidden = self.dropped <= 0;
      });
  };
  // After earlier output pushed the newest out: the last RESYNC_BYTES again, then the live
  // stream from there on.
  Run.prototype.resync = function () {
    var self = this;
    if (this.pending) return;
    this.pending = [];
    var end = this.receivedTotal;
    var offset = Math.max(0, end - RESYNC_BYTES);
    fetchRange(this.url, offset, end - offset).then(function (buffer) {
      self.pre.replaceChildren();
      self.lines = self.chars = 0;
      self.cutTail = false;
      self.decoders = [new TextDecoder("utf-8"), new TextDecoder("utf-8")];
      self.ansi = [new Ansi(), new Ansi()];
      // At most MAX_LINES of it: the rest counts as earlier output.
      var text = new TextDecoder("utf-8").decode(buffer);
      var cut = 0;
      for (var i = text.length, n = 0; i > 0; i--) {
        if (text.charCodeAt(i - 1) === 10 && ++n > MAX_LINES) { cut = i; break; }
      }
      var head = new TextEncoder().encode(text.slice(0, cut)).length;
      self.dropped = offset + head;
      self.pre.appendChild(self.block(new Ansi().convert(text.slice(cut)), buffer.byteLength - head, ""));
    }).catch(function () { /* keep what is shown */ }).then(function () {
      var queued = self.pending || [];
      self.pending = null;
      queued.forEach(function (item) { self.append(item[0], item[1]); });
      self.trim(false);
      self.scroll();
    });
  };

  var job = document.getElementById("job");
  if (job && job.dataset.stream && window.EventSource) {
    var runs = {};
    job.querySelectorAll("section.run").forEach(function (section) {
      runs[section.dataset.run] = new Run(section, job.dataset.output);
    });
    var stream = new EventSource(job.dataset.stream);
    var parse = function (event) { try { return JSON.parse(event.data); } catch (e) { return null; } };
    stream.addEventListener("output", function (event) {
      var data = parse(event);
      var run = data && runs[data.run];
      if (!run) return;
      run.output(data.err, data.b64);
    });
    stream.addEventListener("skipped", function (event) {
      var data = parse(event);
      var run = data && runs[data.run];
      if (run) run.skipped(data.bytes);
    });
    stream.addEventListener("state", function (event) {
      var data = parse(event);
      var run = data && runs[data.run];
      if (!run) return;
      ["state", "exit_code", "duration", "error"].forEach(function (field) {
        var node = run.section.querySelector('[data-field="' + field + '"]');
        if (!node) return;
        node.textContent = data[field] === null || data[field] === undefined ? "" : String(data[field]);
        if (field === "state") node.className = "status " + String(data.state).replace(/[^a-z_]/g, "");
      });
    });
    stream.addEventListener("end", function (event) {
      var data = parse(event);
      var status = document.getElementById("job-status");
      if (status && data) {
        status.textContent = data.status;
        status.className = "status " + String(data.status).replace(/[^a-z_]/g, "");
      }
      stream.close();
      var cancel = document.getElementById("cancel-job");
      if (cancel) cancel.hidden = true;
      // The rest of each run's multi-byte characters, if its output ended inside one.
      Object.keys(runs).forEach(function (id) {
        var run = runs[id];
        run.flush(0);
        [0, 1].forEach(function (s) {
          var rest = run.decoders[s].decode();
          if (rest && !run.cutTail) run.pre.appendChild(run.block(run.ansi[s].convert(rest), 0, s ? "err" : ""));
        });
      });
    });
  }
})();
