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

  // ---- one rollout: its progress, read again every few seconds while it is active ----------
  var rollout = document.getElementById("rollout");
  if (rollout && rollout.dataset.live && window.fetch) {
    var ROLLOUT_EVERY = 3000;
    var drawBar = function (svg, bar) {
      if (!svg || !bar) return;
      svg.setAttribute("aria-label", String(bar.label));
      var rects = svg.querySelectorAll("rect");
      (bar.segments || []).forEach(function (s, i) {
        var rect = rects[i];
        if (!rect) return;
        rect.setAttribute("x", String(s.x));
        rect.setAttribute("width", String(s.width));
        var title = rect.querySelector("title");
        if (title) title.textContent = s.n + " " + s.label;
      });
    };
    var redraw = function (p) {
      drawBar(document.querySelector("#rollout-progress svg.bar"), p.bar);
      var done = document.getElementById("rollout-done-count");
      if (done) done.textContent = String(p.done);
      (p.stages || []).forEach(function (s) {
        var row = rollout.querySelector('tr[data-stage="' + Number(s.stage) + '"]');
        if (!row) return;
        drawBar(row.querySelector("svg.bar"), s.bar);
        var n = row.querySelector(".stage-done");
        if (n) n.textContent = String(s.done);
        var chips = row.querySelector(".chips");
        if (!chips) return;
        var items = document.createDocumentFragment();
        (s.chips || []).forEach(function (c) {
          var a = el("a", "chip status " + String(c.key).replace(/[^a-z_]/g, ""), c.key + " ");
          a.href = c.href;
          a.setAttribute("data-key", c.key);
          a.appendChild(el("span", "n", c.n));
          items.appendChild(a);
          items.appendChild(document.createTextNode(" "));
        });
        chips.replaceChildren(items);
      });
    };
    var pollRollout = function () {
      fetch(rollout.dataset.live, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(function (p) {
          liveState(true);
          if (p.state !== rollout.dataset.state || p.shown !== rollout.dataset.shown) {
            // The buttons and the reason follow the state: the page is drawn again (without
            // the note of the button that led here).
            var url = new URL(window.location.href);
            url.searchParams.delete("done");
            window.location.replace(url.toString());
            return;
          }
          redraw(p);
          if (p.active) setTimeout(pollRollout, ROLLOUT_EVERY);
        })
        .catch(function () { liveState(false); setTimeout(pollRollout, ROLLOUT_EVERY * 2); });
    };
    var rolloutBadge = document.getElementById("live-state");
    if (rolloutBadge) rolloutBadge.hidden = false;
    setTimeout(pollRollout, ROLLOUT_EVERY);
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

  // ---- one job's page: summary, groups, runs, one run's output, comparing two runs --------
  // The summary and groups come again from the page's own stream while the job changes (the
  // server reads them at most once a second); the table's page is fetched again while some of
  // its rows may still change; one run's output streams only while it is open.
  var job = document.getElementById("job");
  if (job && job.dataset.live) {
    var parse = function (event) { try { return JSON.parse(event.data); } catch (e) { return null; } };
    var statusClass = function (text) { return String(text || "").replace(/[^a-z_]/g, ""); };
    var setText = function (id, value) {
      var node = document.getElementById(id);
      if (node) node.textContent = value === null || value === undefined ? "" : String(value);
    };
    var setStatus = function (node, state) {
      node.textContent = state === null || state === undefined ? "" : String(state);
      node.className = "status " + statusClass(state);
    };

    // -- the summary bar and the groups, as the server wrote them --
    var chip = function (item, extraClass) {
      var a = el("a", "chip" + (extraClass ? " " + extraClass : "") + (item.active ? " active" : ""), item.key + " ");
      a.href = item.href;
      a.setAttribute("data-key", item.key);
      a.appendChild(el("span", "n", item.n));
      return a;
    };
    var chips = function (id, items, extra, hint) {
      var node = document.getElementById(id);
      if (!node) return;
      var list = document.createDocumentFragment();
      if (hint && items.length) { list.appendChild(el("span", "hint", hint)); list.appendChild(document.createTextNode(" ")); }
      items.forEach(function (item) {
        list.appendChild(chip(item, extra ? extra(item) : ""));
        list.appendChild(document.createTextNode(" "));
      });
      node.replaceChildren(list);
    };
    var groupItem = function (group) {
      var li = el("li", "group card");
      li.setAttribute("data-key", group.key);
      var head = el("p", "group-head");
      head.appendChild(el("strong", "count", group.count));
      head.appendChild(document.createTextNode(group.count === 1 ? " run · " : " runs · "));
      head.appendChild(el("span", "status " + statusClass(group.state), group.state));
      if (group.exit_code) {
        head.appendChild(document.createTextNode(" · exit code "));
        head.appendChild(el("span", "code", group.exit_code));
      }
      if (group.error) { head.appendChild(document.createTextNode(" ")); head.appendChild(el("span", "error", group.error)); }
      head.appendChild(document.createTextNode(" · "));
      var hosts = el("a", "hosts", group.count === 1 ? "its host" : "its " + group.count + " hosts");
      hosts.href = group.href;
      head.appendChild(hosts);
      head.appendChild(document.createTextNode(" "));
      var eg = el("span", "hint", "(e.g. ");
      var host = el("span", "host", group.hostname);
      host.title = group.agent_id;
      eg.appendChild(host);
      eg.appendChild(document.createTextNode(")"));
      head.appendChild(eg);
      li.appendChild(head);
      var lines = el("pre", "lines");
      lines.appendChild(el("span", "first", group.first_line));
      if (group.last_line !== group.first_line) {
        lines.appendChild(document.createTextNode("\n"));
        lines.appendChild(el("span", "gap", "⋮"));
        lines.appendChild(document.createTextNode("\n"));
        lines.appendChild(el("span", "last", group.last_line));
      }
      li.appendChild(lines);
      return li;
    };
    var showSummary = function (s) {
      var status = document.getElementById("job-status");
      if (status) setStatus(status, s.status);
      var progress = document.getElementById("summary-progress");
      if (progress) { progress.max = Math.max(1, s.total); progress.value = s.finished; }
      setText("summary-finished", s.finished);
      setText("summary-total", s.total);
      setText("summary-p50", s.p50);
      setText("summary-p90", s.p90);
      setText("summary-max", s.max);
      chips("summary-status", s.by_status || [], function (item) { return "status " + statusClass(item.key); });
      chips("summary-exit", s.by_exit_code || [], null, "exit code");
      setText("failed-count", s.failed);
      var rerun = document.getElementById("rerun-failed");
      if (rerun) rerun.hidden = !(s.failed > 0);
      var list = document.getElementById("group-list");
      if (list) {
        var items = document.createDocumentFragment();
        (s.groups || []).forEach(function (group) { items.appendChild(groupItem(group)); });
        list.replaceChildren(items);
      }
      setText("groups-count", s.group_count + (s.group_count === 1 ? " group" : " groups"));
      var more = document.getElementById("groups-more");
      if (more) {
        more.hidden = !s.more;
        more.textContent = "Only the " + (s.groups || []).length + " largest groups are shown.";
      }
      var pending = document.getElementById("groups-pending");
      if (pending) pending.hidden = !(s.undigested > 0);
      setText("groups-undigested", s.undigested);
      var empty = document.getElementById("groups-empty");
      if (empty) empty.hidden = (s.groups || []).length > 0;
    };

    // -- the table of runs --
    var rows = document.getElementById("run-rows");
    var base = document.body.dataset.base;
    var ticked = function () {
      return Array.prototype.slice.call(document.querySelectorAll("#run-rows input[type=checkbox]:checked"));
    };
    var selectionChanged = function () {
      var n = ticked().length;
      setText("selected-count", n);
      var compare = document.getElementById("compare-runs");
      if (compare) compare.disabled = n !== 2;
    };
    var runRow = function (run, checked) {
      var tr = el("tr");
      tr.setAttribute("data-run", run.id);
      tr.setAttribute("data-done", run.done ? "1" : "0");
      tr.setAttribute("data-bytes", String(run.bytes));
      var tick = el("td");
      var box = el("input");
      box.type = "checkbox";
      box.name = "run";
      box.value = run.id;
      box.setAttribute("form", "rerun-selected");
      box.setAttribute("aria-label", "Tick " + run.hostname);
      box.checked = !!checked;
      tick.appendChild(box);
      tr.appendChild(tick);
      var host = el("td");
      var link = el("a", "host", run.hostname);
      link.href = base + "/agents/" + encodeURIComponent(run.agent_id);
      link.title = run.agent_id;
      host.appendChild(link);
      tr.appendChild(host);
      var state = el("td");
      state.appendChild(el("span", "status " + statusClass(run.state), run.state));
      if (run.error) { state.appendChild(document.createTextNode(" ")); state.appendChild(el("span", "error", run.error)); }
      tr.appendChild(state);
      tr.appendChild(el("td", null, run.exit_code));
      tr.appendChild(el("td", null, run.duration));
      var out = el("td");
      var open = el("a", "open-run", "Output");
      open.href = job.dataset.job + "?run=" + encodeURIComponent(run.id) + "#run-output";
      open.setAttribute("data-run", run.id);
      out.appendChild(open);
      tr.appendChild(out);
      return tr;
    };
    var refreshing = false;
    var refreshRows = function (always) {
      if (!rows || refreshing || !window.fetch) return;
      if (!always && !rows.querySelector("tr[data-done='0']")) return;
      refreshing = true;
      fetch(job.dataset.runs, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(function (page) {
          var keep = {};
          ticked().forEach(function (box) { keep[box.value] = true; });
          var body = document.createDocumentFragment();
          (page.rows || []).forEach(function (run) { body.appendChild(runRow(run, keep[run.id])); });
          rows.replaceChildren(body);
          selectionChanged();
        })
        .catch(function () { /* the next change tries again */ })
        .then(function () { refreshing = false; });
    };
    if (rows) {
      rows.addEventListener("change", selectionChanged);
      rows.addEventListener("click", function (event) {
        var target = event.target;
        var open = target.closest && target.closest("a.open-run");
        if (open) {
          event.preventDefault();
          openRun(open.getAttribute("data-run"));
          return;
        }
        if (target.closest && (target.closest("a") || target.closest("input") || target.closest("label"))) return;
        var tr = target.closest && target.closest("tr[data-run]");
        if (tr) openRun(tr.getAttribute("data-run"));
      });
      selectionChanged();
    }

    // -- one run's output: the viewer above, fed by that run's own stream --
    var panel = document.getElementById("run-output");
    var pristine = panel ? panel.cloneNode(true) : null;
    var current = null; // {run, source}
    var rowFacts = function (id) {
      var tr = rows && rows.querySelector("tr[data-run='" + String(id).replace(/[^0-9a-f-]/g, "") + "']");
      if (!tr) return null;
      var host = tr.querySelector("a.host");
      var cells = tr.querySelectorAll("td");
      var status = tr.querySelector(".status");
      var error = tr.querySelector("td .error");
      return {
        hostname: host ? host.textContent : "",
        agent_id: host ? host.title : "",
        state: status ? status.textContent : "",
        exit_code: cells[3] ? cells[3].textContent : "",
        duration: cells[4] ? cells[4].textContent : "",
        error: error ? error.textContent : "",
        bytes: parseInt(tr.getAttribute("data-bytes") || "0", 10)
      };
    };
    var showState = function (section, data) {
      ["exit_code", "duration", "error"].forEach(function (field) {
        var node = section.querySelector('[data-field="' + field + '"]');
        if (node) node.textContent = data[field] === null || data[field] === undefined ? "" : String(data[field]);
      });
      var state = section.querySelector('[data-field="state"]');
      if (state) setStatus(state, data.state);
    };
    var openRun = function (id, facts, initial) {
      if (!panel || !id) return;
      if (current) { current.source.close(); current = null; }
      facts = facts || rowFacts(id);
      var fresh = pristine.cloneNode(true);
      fresh.hidden = false;
      fresh.setAttribute("data-run", id);
      panel.replaceWith(fresh);
      panel = fresh;
      if (facts) {
        var host = panel.querySelector('[data-field="hostname"]');
        if (host) {
          host.textContent = facts.hostname;
          host.title = facts.agent_id;
          host.href = base + "/agents/" + encodeURIComponent(facts.agent_id);
        }
        showState(panel, facts);
      }
      var raw = panel.querySelector("a.raw");
      if (raw) raw.href = job.dataset.output + encodeURIComponent(id) + "/output?download=1";
      var run = new Run(panel, job.dataset.output);
      var source = new EventSource(job.dataset.stream + "?run=" + encodeURIComponent(id));
      current = { run: run, source: source };
      source.addEventListener("output", function (event) {
        var data = parse(event);
        if (data && data.run === id) run.output(data.err, data.b64);
      });
      source.addEventListener("skipped", function (event) {
        var data = parse(event);
        if (data && data.run === id) run.skipped(data.bytes);
      });
      source.addEventListener("state", function (event) {
        var data = parse(event);
        if (data && data.run === id) showState(panel, data);
      });
      source.addEventListener("end", function () {
        source.close();
        // The rest of the output's multi-byte characters, if it ended inside one.
        run.flush(0);
        [0, 1].forEach(function (s) {
          var rest = run.decoders[s].decode();
          if (rest && !run.cutTail) run.pre.appendChild(run.block(run.ansi[s].convert(rest), 0, s ? "err" : ""));
        });
      });
      if (!initial) {
        if (window.history && window.URL) {
          var url = new URL(window.location.href);
          url.searchParams.set("run", id);
          url.hash = "run-output";
          window.history.replaceState(null, "", url.toString());
        }
        panel.scrollIntoView({ block: "nearest" });
      }
    };
    if (panel && panel.dataset.run) {
      var id0 = panel.dataset.run;
      var facts0 = {
        hostname: panel.querySelector('[data-field="hostname"]').textContent,
        agent_id: panel.querySelector('[data-field="hostname"]').title,
        state: panel.querySelector('[data-field="state"]').textContent,
        exit_code: panel.querySelector('[data-field="exit_code"]').textContent,
        duration: panel.querySelector('[data-field="duration"]').textContent,
        error: panel.querySelector('[data-field="error"]').textContent
      };
      // The pristine copy is of an empty panel.
      pristine.removeAttribute("data-run");
      pristine.querySelector("pre.output").replaceChildren();
      openRun(id0, facts0, true);
    }

    // -- the summary's stream --
    var settle = function (status) {
      var node = document.getElementById("job-status");
      if (node && status) setStatus(node, status);
      var cancel = document.getElementById("cancel-job");
      if (cancel) cancel.hidden = true;
      refreshRows(true);
    };
    if (job.dataset.settled !== "1" && window.EventSource) {
      var live = new EventSource(job.dataset.live);
      var badge = document.getElementById("live-state");
      if (badge) badge.hidden = false;
      live.addEventListener("open", function () { liveState(true); });
      live.addEventListener("error", function () { liveState(false); });
      live.addEventListener("summary", function (event) {
        liveState(true);
        var data = parse(event);
        if (!data) return;
        showSummary(data);
        if (data.status !== "running") {
          var cancel = document.getElementById("cancel-job");
          if (cancel) cancel.hidden = true;
        }
        refreshRows(false);
      });
      live.addEventListener("end", function (event) {
        var data = parse(event);
        live.close();
        if (badge) badge.hidden = true;
        settle(data && data.status);
      });
    }

    // -- comparing two runs' output: a line diff in the page --
    var COMPARE_BYTES = 256 * 1024;
    var COMPARE_LINES = 20000;
    var MAX_EDITS = 2000;
    var CONTEXT = 3;
    var plainText = function (buffer) {
      var text = new TextDecoder("utf-8").decode(buffer);
      return new Ansi().convert(text).map(function (part) { return part[0]; }).join("");
    };
    var fetchOutput = function (id) {
      return fetch(job.dataset.output + encodeURIComponent(id) + "/output?offset=0&len=" + COMPARE_BYTES,
        { credentials: "same-origin" })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.arrayBuffer();
        });
    };
    // Myers' O(ND) line diff after the common head and tail are set aside; `null` when the
    // two differ in more than `maxEdits` lines. Returns [[op, line]…] with op " ", "-" or "+".
    var diffLines = function (a, b, maxEdits) {
      var head = 0;
      while (head < a.length && head < b.length && a[head] === b[head]) head++;
      var endA = a.length, endB = b.length;
      while (endA > head && endB > head && a[endA - 1] === b[endB - 1]) { endA--; endB--; }
      var A = a.slice(head, endA), B = b.slice(head, endB);
      var N = A.length, M = B.length;
      var middle = [];
      if (N === 0 || M === 0) {
        A.forEach(function (line) { middle.push(["-", line]); });
        B.forEach(function (line) { middle.push(["+", line]); });
      } else {
        var max = N + M, offset = max + 1;
        var v = new Int32Array(2 * max + 3);
        var trace = [];
        var found = -1;
        for (var d = 0; d <= Math.min(max, maxEdits) && found < 0; d++) {
          for (var k = -d; k <= d; k += 2) {
            var x;
            if (k === -d || (k !== d && v[offset + k - 1] < v[offset + k + 1])) x = v[offset + k + 1];
            else x = v[offset + k - 1] + 1;
            var y = x - k;
            while (x < N && y < M && A[x] === B[y]) { x++; y++; }
            v[offset + k] = x;
            if (x >= N && y >= M) { found = d; break; }
          }
          trace.push(v.slice(offset - d, offset + d + 1));
        }
        if (found < 0) return null;
        var cx = N, cy = M;
        for (var e = found; e > 0; e--) {
          var prev = trace[e - 1];
          var at = function (kk) { return prev[kk + e - 1]; };
          var kk = cx - cy;
          var prevK = (kk === -e || (kk !== e && at(kk - 1) < at(kk + 1))) ? kk + 1 : kk - 1;
          var px = at(prevK), py = px - prevK;
          while (cx > px && cy > py) { middle.push([" ", A[cx - 1]]); cx--; cy--; }
          if (prevK === kk + 1) { middle.push(["+", B[cy - 1]]); cy--; }
          else { middle.push(["-", A[cx - 1]]); cx--; }
        }
        while (cx > 0 && cy > 0) { middle.push([" ", A[cx - 1]]); cx--; cy--; }
        middle.reverse();
      }
      var out = [];
      for (var i = 0; i < head; i++) out.push([" ", a[i]]);
      middle.forEach(function (op) { out.push(op); });
      for (var j = endA; j < a.length; j++) out.push([" ", a[j]]);
      return out;
    };
    var showDiff = function (ops) {
      var pre = document.getElementById("compare-diff");
      var lines = document.createDocumentFragment();
      var i = 0;
      while (i < ops.length) {
        if (ops[i][0] === " ") {
          var j = i;
          while (j < ops.length && ops[j][0] === " ") j++;
          var run = j - i;
          var keepHead = i === 0 ? 0 : CONTEXT, keepTail = j === ops.length ? 0 : CONTEXT;
          if (run > keepHead + keepTail + 1) {
            for (var h = i; h < i + keepHead; h++) lines.appendChild(el("span", "same", "  " + ops[h][1] + "\n"));
            lines.appendChild(el("span", "note", "  ⋯ " + (run - keepHead - keepTail) + " lines the same ⋯\n"));
            for (var t = j - keepTail; t < j; t++) lines.appendChild(el("span", "same", "  " + ops[t][1] + "\n"));
          } else {
            for (var s = i; s < j; s++) lines.appendChild(el("span", "same", "  " + ops[s][1] + "\n"));
          }
          i = j;
        } else {
          lines.appendChild(el("span", ops[i][0] === "-" ? "del" : "add", ops[i][0] + " " + ops[i][1] + "\n"));
          i++;
        }
      }
      pre.replaceChildren(lines);
    };
    var compareButton = document.getElementById("compare-runs");
    if (compareButton && window.fetch) {
      compareButton.addEventListener("click", function () {
        var boxes = ticked();
        if (boxes.length !== 2) return;
        var ids = boxes.map(function (box) { return box.value; });
        var facts = ids.map(function (id) { return rowFacts(id) || { hostname: id, agent_id: "", bytes: 0 }; });
        var section = document.getElementById("compare");
        var note = document.getElementById("compare-note");
        section.hidden = false;
        setText("compare-a", facts[0].hostname);
        setText("compare-b", facts[1].hostname);
        document.getElementById("compare-a").title = facts[0].agent_id;
        document.getElementById("compare-b").title = facts[1].agent_id;
        note.textContent = "Loading both outputs…";
        document.getElementById("compare-diff").replaceChildren();
        compareButton.disabled = true;
        Promise.all(ids.map(fetchOutput)).then(function (buffers) {
          var notes = [];
          var texts = buffers.map(function (buffer, n) {
            if (facts[n].bytes > COMPARE_BYTES || buffer.byteLength >= COMPARE_BYTES) {
              notes.push(facts[n].hostname + ": only the first " + (COMPARE_BYTES / 1024) + " KiB of its output");
            }
            var lines = plainText(buffer).split("\n");
            if (lines.length && lines[lines.length - 1] === "") lines.pop();
            if (lines.length > COMPARE_LINES) {
              notes.push(facts[n].hostname + ": only its first " + COMPARE_LINES + " lines");
              lines = lines.slice(0, COMPARE_LINES);
            }
            return lines;
          });
          var ops = diffLines(texts[0], texts[1], MAX_EDITS);
          if (ops === null) {
            notes.unshift("The outputs differ in more than " + MAX_EDITS + " lines: no line diff.");
            document.getElementById("compare-diff").replaceChildren();
          } else {
            var changed = ops.filter(function (op) { return op[0] !== " "; }).length;
            notes.unshift(changed === 0 ? "The outputs are the same." :
              changed + " line" + (changed === 1 ? "" : "s") + " differ (− " + facts[0].hostname + ", + " + facts[1].hostname + ").");
            showDiff(ops);
          }
          note.textContent = notes.join(" ");
        }).catch(function (error) {
          note.textContent = "Could not load the outputs (" + error.message + ").";
        }).then(function () {
          compareButton.disabled = ticked().length !== 2;
          section.scrollIntoView({ block: "nearest" });
        });
      });
    }
  }
})();

// ---- the script editor (CONTRACT.md §20) ---------------------------------------------------
// A small editor of our own over plain text areas, so that the page works without it: line
// numbers beside each file, Tab inserting a tab (Esc then Tab leaves the file, so the keyboard
// is never trapped), and a search over every file of the form. The text never goes through
// markup: the gutter is numbers set with textContent.
(function () {
  var form = document.getElementById("editor");
  if (!form) return;
  var areas = Array.prototype.slice.call(form.querySelectorAll("textarea.code"));
  var escaped = null;
  areas.forEach(function (area) {
    var box = document.createElement("div");
    box.className = "editor";
    var gutter = document.createElement("pre");
    gutter.className = "gutter";
    gutter.setAttribute("aria-hidden", "true");
    area.parentNode.insertBefore(box, area);
    box.appendChild(gutter);
    box.appendChild(area);
    var shown = 0;
    function fit() {
      var lines = area.value.split("\n").length;
      if (lines !== shown) {
        var text = [];
        for (var i = 1; i <= lines; i++) text.push(String(i));
        gutter.textContent = text.join("\n");
        shown = lines;
      }
      area.style.height = "auto";
      area.style.height = Math.max(area.scrollHeight, 60) + "px";
    }
    area.addEventListener("input", fit);
    area.addEventListener("keydown", function (event) {
      if (event.key === "Escape") { escaped = area; return; }
      if (event.key !== "Tab" || event.ctrlKey || event.altKey || event.metaKey) return;
      if (escaped === area) { escaped = null; return; }
      event.preventDefault();
      var start = area.selectionStart, end = area.selectionEnd, value = area.value;
      if (event.shiftKey) {
        // Outdent the current line by one tab or four spaces.
        var lineStart = value.lastIndexOf("\n", start - 1) + 1;
        var cut = value.slice(lineStart, lineStart + 4);
        var n = cut.charAt(0) === "\t" ? 1 : (cut.match(/^ */)[0].length);
        if (n > 0) {
          area.setRangeText("", lineStart, lineStart + n, "preserve");
          area.setSelectionRange(Math.max(lineStart, start - n), Math.max(lineStart, end - n));
        }
      } else {
        area.setRangeText("\t", start, end, "end");
      }
      fit();
    });
    fit();
  });
  var find = document.getElementById("editor-find");
  var next = document.getElementById("editor-find-next");
  var status = document.getElementById("editor-find-status");
  var at = { area: 0, index: 0 };
  function search() {
    var needle = find.value;
    if (!needle) { status.textContent = ""; return; }
    for (var k = 0; k <= areas.length; k++) {
      var i = (at.area + k) % areas.length;
      var area = areas[i];
      var from = k === 0 ? at.index : 0;
      var found = area.value.indexOf(needle, from);
      if (found >= 0) {
        area.focus();
        area.setSelectionRange(found, found + needle.length);
        // Scroll the match into view: the line's share of the area's height.
        var line = area.value.slice(0, found).split("\n").length;
        var box = area.parentNode;
        box.scrollTop = Math.max(0, (line - 3) * (area.scrollHeight / Math.max(1, area.value.split("\n").length)));
        box.scrollIntoView({ block: "nearest" });
        at = { area: i, index: found + needle.length };
        status.textContent = "Found in " + (area.getAttribute("data-path") || "the new file") + ", line " + line;
        find.focus();
        return;
      }
    }
    status.textContent = "Not found";
    at = { area: 0, index: 0 };
  }
  next.addEventListener("click", search);
  find.addEventListener("keydown", function (event) {
    if (event.key === "Enter") { event.preventDefault(); search(); }
  });
  find.addEventListener("input", function () { at = { area: 0, index: 0 }; });
})();
