/* RRMM status board.
 *
 * The page itself holds no data. This script takes the viewer key from the link's fragment
 * (`#key=…`, which browsers never send to the server), keeps it in sessionStorage (this tab
 * only) and removes it from the address bar, then follows the incident's event stream:
 * `fetch()` with the key in the Authorization header (never in a URL, which EventSource
 * would need) and a streaming reader, each `status` event drawn as it comes. Where the
 * stream cannot be had (a proxy that buffers, a browser without streaming bodies, a limit
 * reached) or breaks, it polls the status API with `If-None-Match` instead, and tries the
 * stream again later. Only when the status changed does it read the coverage again, and
 * then at most once every COVERAGE_MIN_MS: during a big fan-out the status changes all the
 * time, and the coverage queries grow with the incident's audience (the status read does
 * not).
 *
 * Everything from the API is written with textContent or setAttribute: nothing is ever
 * parsed as HTML.
 */
(function () {
  "use strict";

  var POLL_MS = 2000;
  var MAX_DELAY_MS = 30000;
  var TIMEOUT_MS = 10000;
  var COVERAGE_MIN_MS = 10000;
  // The server sends a keep-alive comment every 15 s: a stream silent for longer is dead.
  var STREAM_IDLE_MS = 45000;
  var STREAM_RETRY_MS = 15000; // polling, then the stream tried again after this (doubling)
  var STREAM_RETRY_MAX_MS = 300000;
  var STORAGE = "rrmm.board.key";
  var COVERAGE = ["network", "language", "channel"];
  var CONNECTION = {
    connecting: "connecting…",
    live: "live",
    stale: "stale (retrying)",
    waiting: "waiting for a key",
    stopped: "stopped"
  };

  var address = /^(.*)\/board\/incidents\/([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\/?$/
    .exec(location.pathname);
  if (!address) {
    return;
  }
  var API = address[1] + "/v1/incidents/" + address[2].toLowerCase();

  function $(id) {
    return document.getElementById(id);
  }

  var ui = {
    board: $("board"),
    keyPanel: $("key-panel"),
    keyMessage: $("key-message"),
    keyForm: $("key-form"),
    keyInput: $("key-input"),
    forget: $("forget"),
    problem: $("problem"),
    connection: $("connection"),
    checked: $("checked"),
    exercise: $("exercise")
  };
  // The delivery states, in display order, as the server spells them (app/vocabulary.py).
  var DELIVERY_STATES = ui.board.getAttribute("data-delivery-states").split(" ");

  // ------------------------------------------------------------------ the key

  var memoryKey = null; // when sessionStorage is unavailable (some private modes)

  function loadKey() {
    try {
      return window.sessionStorage.getItem(STORAGE) || memoryKey;
    } catch (e) {
      return memoryKey;
    }
  }

  function saveKey(key) {
    memoryKey = key;
    try {
      window.sessionStorage.setItem(STORAGE, key);
    } catch (e) {
      /* kept in memory only */
    }
  }

  function forgetKey() {
    memoryKey = null;
    try {
      window.sessionStorage.removeItem(STORAGE);
    } catch (e) {
      /* nothing stored */
    }
  }

  /* Takes `key=…` out of the fragment (and so out of the address bar and the history). */
  function keyFromFragment() {
    var fragment = location.hash.replace(/^#/, "");
    if (!fragment) {
      return null;
    }
    var key = null;
    var rest = [];
    fragment.split("&").forEach(function (part) {
      if (part.indexOf("key=") === 0) {
        try {
          key = decodeURIComponent(part.slice(4)).trim();
        } catch (e) {
          key = part.slice(4).trim();
        }
      } else if (part) {
        rest.push(part);
      }
    });
    if (key === null) {
      return null;
    }
    history.replaceState(history.state, "", location.pathname + location.search +
      (rest.length ? "#" + rest.join("&") : ""));
    return key || null;
  }

  // ------------------------------------------------------------------ polling

  var state = {
    key: null, etag: null, timer: null, failures: 0, run: 0, busy: false,
    // The incident and its coverage as last read, when, and whether a status shown since
    // is newer than them.
    details: null, detailsAt: 0, detailsBehind: false, status: null,
    // The stream: its abort controller while open, failures in a row, when to try again.
    stream: null, streamFailures: 0, streamAt: 0, detailsTimer: null
  };

  function Refused(status) {
    this.status = status;
  }

  // Every request the board makes: never cached, no cookies, no redirects, no referrer.
  function requestOptions(headers, signal) {
    return {
      headers: headers,
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
      referrerPolicy: "no-referrer",
      signal: signal
    };
  }

  function request(path, etag) {
    var headers = { Accept: "application/json", Authorization: "Bearer " + state.key };
    if (etag) {
      headers["If-None-Match"] = etag;
    }
    var controller = new AbortController();
    var timeout = setTimeout(function () {
      controller.abort();
    }, TIMEOUT_MS);
    return fetch(API + path, requestOptions(headers, controller.signal)).then(function (response) {
      if (response.status === 304) {
        return { status: 304, etag: etag, body: null };
      }
      if (response.status === 401 || response.status === 403 || response.status === 404) {
        throw new Refused(response.status);
      }
      if (response.status !== 200) {
        throw new Error("HTTP " + response.status);
      }
      return response.json().then(function (body) {
        return { status: 200, etag: response.headers.get("ETag"), body: body };
      });
    }).finally(function () {
      clearTimeout(timeout);
    });
  }

  function schedule(delay) {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, delay);
  }

  function stop() {
    clearTimeout(state.timer);
    clearTimeout(state.detailsTimer);
    state.timer = null;
    state.detailsTimer = null;
    state.run += 1; // answers to requests already sent are ignored
    state.busy = false;
    if (state.stream) {
      state.stream.abort();
      state.stream = null;
    }
  }

  /* Draws a status (read by a poll or from the stream) with the incident and coverage, read
   * again when due. `status` is {status: 200 | 304, etag, body}. */
  function show(status, run) {
    var unchanged = status.status === 304 ||
      (status.etag !== null && status.etag === state.etag);
    var detailsDue = !state.details || Date.now() - state.detailsAt >= COVERAGE_MIN_MS;
    if (unchanged && !(state.detailsBehind && detailsDue)) {
      return Promise.resolve(null);
    }
    var reads = detailsDue ? [request("")].concat(COVERAGE.map(function (by) {
      return request("/coverage?by=" + by);
    })) : [];
    return Promise.all(reads).then(function (more) {
      if (run !== state.run) {
        return;
      }
      if (detailsDue) {
        state.details = {
          incident: more[0].body,
          coverage: more.slice(1).map(function (m) { return m.body; })
        };
        state.detailsAt = Date.now();
      }
      state.detailsBehind = !detailsDue;
      if (!unchanged) {
        state.status = status.body;
      }
      render(state.status, state.details.incident, state.details.coverage);
      if (!unchanged) {
        state.etag = status.etag; // only once everything it describes is on screen
      }
    });
  }

  function checked() {
    state.failures = 0;
    connection("live");
    ui.checked.textContent = new Date().toLocaleTimeString();
    ui.checked.setAttribute("datetime", new Date().toISOString());
  }

  function poll() {
    var run = state.run;
    state.timer = null;
    if (state.key && Date.now() >= state.streamAt && canStream()) {
      listen();
      return;
    }
    state.busy = true;
    request("/status", state.etag).then(function (status) {
      if (run !== state.run) {
        return null;
      }
      return show(status, run);
    }).then(function () {
      if (run !== state.run) {
        return;
      }
      state.busy = false;
      checked();
      schedule(POLL_MS);
    }).catch(function (error) {
      if (run !== state.run) {
        return;
      }
      state.busy = false;
      if (error instanceof Refused) {
        refused(error.status);
        return;
      }
      state.failures += 1;
      connection("stale");
      schedule(Math.min(POLL_MS * Math.pow(2, state.failures), MAX_DELAY_MS));
    });
  }

  // ------------------------------------------------------------------ the stream

  function canStream() {
    return typeof ReadableStream !== "undefined" && typeof TextDecoder !== "undefined" &&
      typeof AbortController !== "undefined";
  }

  /* Follows the events stream until it ends, then polls (and tries it again later). */
  function listen() {
    var run = state.run;
    var controller = new AbortController();
    var idle = null;
    var events = 0;
    var drawn = Promise.resolve();
    state.stream = controller;
    state.busy = true;
    transport("stream");

    function alive() {
      clearTimeout(idle);
      idle = setTimeout(function () {
        controller.abort();
      }, STREAM_IDLE_MS);
    }

    alive();
    var streamHeaders = { Accept: "text/event-stream", Authorization: "Bearer " + state.key };
    fetch(API + "/events", requestOptions(streamHeaders, controller.signal)).then(function (response) {
      if (response.status === 401 || response.status === 403 || response.status === 404) {
        throw new Refused(response.status);
      }
      if (response.status !== 200 || !response.body || !response.body.getReader) {
        throw new Error("no stream: HTTP " + response.status);
      }
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      var parser = sseParser(function (name, data) {
        if (name !== "status" || run !== state.run) {
          return; // timeline and answer events: the status that follows carries the figures
        }
        var body = JSON.parse(data);
        events += 1;
        state.busy = false;
        // One after the other: a status whose coverage is being read is not drawn over a
        // newer one.
        drawn = drawn.then(function () {
          return show({ status: 200, etag: null, body: body }, run);
        }).then(function () {
          if (run === state.run) {
            state.streamFailures = 0;
            checked();
            detailsLater(run);
          }
        }).catch(function () {
          /* the coverage could not be read: the next status event reads it again */
        });
      });
      function next() {
        return reader.read().then(function (chunk) {
          if (chunk.done || run !== state.run) {
            return;
          }
          alive();
          parser(decoder.decode(chunk.value, { stream: true }));
          return next();
        });
      }
      return next();
    }).then(function () {
      ended(null);
    }, function (error) {
      ended(error);
    });

    function ended(error) {
      clearTimeout(idle);
      if (run !== state.run) {
        return;
      }
      state.stream = null;
      state.busy = false;
      if (error instanceof Refused) {
        refused(error.status);
        return;
      }
      // Broken, refused (e.g. 429) or never started: poll now, stream again later.
      state.streamFailures = events ? 1 : state.streamFailures + 1;
      state.streamAt = Date.now() + Math.min(
        STREAM_RETRY_MS * Math.pow(2, state.streamFailures - 1), STREAM_RETRY_MAX_MS);
      if (events) {
        state.etag = null; // what the stream drew carries no ETag: the next poll reads it all
      }
      transport("poll");
      schedule(0);
    }
  }

  /* While streaming, a status event drawn before its coverage was due leaves the coverage
   * behind: read it once it is due, even if no other event comes. */
  function detailsLater(run) {
    clearTimeout(state.detailsTimer);
    if (!state.detailsBehind) {
      return;
    }
    state.detailsTimer = setTimeout(function () {
      if (run === state.run && state.stream) {
        show({ status: 304, etag: state.etag, body: null }, run).catch(function () {});
      }
    }, Math.max(state.detailsAt + COVERAGE_MIN_MS - Date.now(), 0));
  }

  /* A server-sent events parser: text in, (event name, data) out once a blank line ends an
   * event. Lines end with CRLF, LF or CR; a CR at the end of a chunk waits for the next. */
  function sseParser(dispatch) {
    var buffer = "";
    var name = "";
    var data = [];
    return function (text) {
      buffer += text;
      var match;
      var line = /\r\n|\n|\r(?=[^\n])/;
      while ((match = line.exec(buffer)) !== null) {
        var current = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        if (current === "") {
          if (data.length) {
            dispatch(name || "message", data.join("\n"));
          }
          name = "";
          data = [];
        } else if (current.charAt(0) !== ":") {
          var colon = current.indexOf(":");
          var field = colon < 0 ? current : current.slice(0, colon);
          var value = colon < 0 ? "" : current.slice(colon + 1).replace(/^ /, "");
          if (field === "event") {
            name = value;
          } else if (field === "data") {
            data.push(value);
          }
        }
      }
    };
  }

  function transport(name) {
    ui.connection.setAttribute("data-transport", name);
  }

  function pollSoon() {
    if (state.key && state.timer !== null && !state.busy) {
      schedule(0);
    }
  }

  function connection(name) {
    ui.connection.textContent = CONNECTION[name];
    ui.connection.setAttribute("data-state", name);
    document.body.classList.toggle("is-stale", name === "stale");
  }

  function start(key) {
    stop();
    state.key = key;
    state.etag = null;
    state.details = null;
    state.detailsBehind = false;
    state.failures = 0;
    state.streamFailures = 0;
    state.streamAt = 0;
    ui.keyPanel.hidden = true;
    ui.problem.hidden = true;
    ui.forget.hidden = false;
    connection("connecting");
    poll();
  }

  function askForKey(message) {
    stop();
    state.key = null;
    state.etag = null;
    ui.board.hidden = true;
    ui.exercise.hidden = true;
    ui.forget.hidden = true;
    ui.keyMessage.textContent = message;
    ui.keyPanel.hidden = false;
    connection("waiting");
    ui.keyInput.focus();
  }

  function refused(status) {
    if (status === 404) {
      stop();
      ui.board.hidden = true;
      ui.problem.textContent = "There is no incident with this id, or it has been deleted.";
      ui.problem.hidden = false;
      connection("stopped");
      return;
    }
    forgetKey();
    askForKey(status === 401
      ? "This key was not accepted: it is unknown or has been revoked. Paste a valid viewer key."
      : "This key may not read incident status. Paste a viewer key.");
  }

  // ------------------------------------------------------------------ formatting

  function number(value) {
    return typeof value === "number" ? value.toLocaleString("en") : "—";
  }

  function percent(rate) {
    return typeof rate === "number" ? Math.round(rate * 1000) / 10 + "%" : "—";
  }

  function two(n) {
    return (n < 10 ? "0" : "") + n;
  }

  function duration(seconds) {
    if (typeof seconds !== "number") {
      return "—";
    }
    if (seconds < 10) {
      return seconds.toFixed(1) + " s";
    }
    var whole = Math.round(seconds);
    if (whole < 60) {
      return whole + " s";
    }
    if (whole < 3600) {
      return Math.floor(whole / 60) + " min " + two(whole % 60) + " s";
    }
    return Math.floor(whole / 3600) + " h " + two(Math.floor(whole / 60) % 60) + " min";
  }

  function label(slug) {
    var words = String(slug).replace(/[_-]+/g, " ");
    return words.charAt(0).toUpperCase() + words.slice(1);
  }

  function set(id, text, value) {
    var element = $(id);
    element.textContent = text;
    element.setAttribute("data-value", value === null || value === undefined ? "" : String(value));
  }

  function setTime(id, iso) {
    var element = $(id);
    var date = new Date(iso);
    element.textContent = isNaN(date.getTime()) ? "—" : date.toLocaleString();
    element.setAttribute("datetime", isNaN(date.getTime()) ? "" : iso);
  }

  function make(tag, text, field, value) {
    var element = document.createElement(tag);
    if (text !== undefined && text !== null) {
      element.textContent = text;
    }
    if (field) {
      element.setAttribute("data-field", field);
      element.setAttribute("data-value", String(value));
    }
    return element;
  }

  function clear(element) {
    while (element.firstChild) {
      element.removeChild(element.firstChild);
    }
    return element;
  }

  function row(name, value, field) {
    var tr = make("tr");
    var th = make("th", name);
    th.setAttribute("scope", "row");
    tr.appendChild(th);
    tr.appendChild(make("td", number(value), field, value));
    return tr;
  }

  function ordered(known, counts) {
    var keys = known.slice();
    Object.keys(counts || {}).sort().forEach(function (key) {
      if (keys.indexOf(key) < 0) {
        keys.push(key);
      }
    });
    return keys;
  }

  // ------------------------------------------------------------------ rendering

  function render(status, incident, coverage) {
    var exercise = status.mode === "exercise";
    var answers = status.answers;

    set("reference", status.reference, status.reference);
    set("title", incident.title, incident.title);
    set("status", status.status, status.status);
    $("status").setAttribute("data-state", status.status);
    set("mode", exercise ? "EXERCISE" : status.mode, status.mode);
    set("severity", status.severity, status.severity);
    setTime("last-change", status.last_change_at);
    ui.exercise.hidden = !exercise;
    document.body.classList.toggle("is-exercise", exercise);

    set("targeted", number(status.targeted), status.targeted);
    set("answered", number(answers.answered), answers.answered);
    set("ack-rate", percent(answers.ack_rate), answers.ack_rate);
    set("first-answer", duration(answers.first_answer_seconds), answers.first_answer_seconds);
    set("median-answer", duration(answers.median_answer_seconds), answers.median_answer_seconds);

    var byResponse = answers.by_response || {};
    var answerRows = clear($("answers"));
    ordered(incident.responses || [], byResponse).forEach(function (response) {
      answerRows.appendChild(row(label(response), byResponse[response] || 0, "answers." + response));
    });

    var byStatus = status.deliveries.by_status || {};
    var deliveryRows = clear($("deliveries"));
    ordered(DELIVERY_STATES, byStatus).forEach(function (name) {
      deliveryRows.appendChild(row(label(name), byStatus[name] || 0, "deliveries." + name));
    });

    var byChannel = status.deliveries.by_channel || {};
    var channels = clear($("channels"));
    var channelNames = Object.keys(byChannel).sort();
    channelNames.forEach(function (channel) {
      var li = make("li");
      li.appendChild(make("strong", label(channel) + ": "));
      ordered(DELIVERY_STATES, byChannel[channel]).forEach(function (name) {
        var count = byChannel[channel][name];
        if (!count) {
          return;
        }
        if (li.childNodes.length > 1) {
          li.appendChild(document.createTextNode(" · "));
        }
        li.appendChild(make("span", number(count), "channel." + channel + "." + name, count));
        li.appendChild(document.createTextNode(" " + name));
      });
      channels.appendChild(li);
    });
    if (!channelNames.length) {
      channels.appendChild(make("li", "No deliveries yet."));
    }

    renderQuotas(status.quotas || []);

    var followup = status.followup || {};
    set("reminders", number((followup.reminders || []).length), (followup.reminders || []).length);
    set("escalations", number((followup.escalations || []).length),
      (followup.escalations || []).length);

    renderCoverage(coverage);

    document.title = status.reference + " · " + number(answers.answered) + "/" +
      number(status.targeted) + " answered · RRMM";
    ui.board.hidden = false;
  }

  function renderQuotas(quotas) {
    var list = clear($("quotas"));
    var met = 0;
    quotas.forEach(function (quota, index) {
      if (quota.met) {
        met += 1;
      }
      var li = make("li", null, "quota." + index, quota.met ? "met" : "unmet");
      li.className = "quota";
      var segment = [
        quota.network ? label(quota.network) : "All networks",
        (quota.countries || []).join(", "),
        (quota.languages || []).join(", ")
      ].filter(Boolean).join(" · ");
      var head = make("p");
      head.appendChild(make("strong", segment));
      var badge = make("span", quota.met ? "met" : "unmet", "quota." + index + ".met", quota.met);
      badge.className = "badge";
      badge.setAttribute("data-state", quota.met ? "met" : "unmet");
      head.appendChild(document.createTextNode(" "));
      head.appendChild(badge);
      li.appendChild(head);

      var progress = make("progress");
      progress.max = Math.max(quota.min, 1);
      progress.value = Math.min(quota.answered, quota.min);
      progress.textContent = quota.answered + " / " + quota.min;
      li.appendChild(progress);

      var figures = make("p");
      figures.className = "muted";
      figures.appendChild(make("span", number(quota.answered), "quota." + index + ".answered",
        quota.answered));
      figures.appendChild(document.createTextNode(" of at least "));
      figures.appendChild(make("span", number(quota.min), "quota." + index + ".min", quota.min));
      figures.appendChild(document.createTextNode(
        " answered " + (quota.responses || []).map(label).join(" or ").toLowerCase() +
        " (" + number(quota.targeted) + " targeted)"));
      li.appendChild(figures);
      list.appendChild(li);
    });
    if (!quotas.length) {
      list.appendChild(make("li", "No quotas set for this incident."));
    }
    set("quota-summary", quotas.length ? "(" + met + " of " + quotas.length + " met)" : "", met);
  }

  function renderCoverage(coverage) {
    var box = clear($("coverage"));
    coverage.forEach(function (view) {
      var by = view.by;
      var wrap = make("div");
      wrap.className = "scroll";
      var table = make("table");
      table.className = "coverage";
      table.setAttribute("data-field", "coverage." + by);
      table.appendChild(make("caption", "By " + by));
      var headRow = make("tr");
      [label(by), "Targeted", "Reached", "Failed", "Answered", "Rate"].forEach(function (title) {
        var th = make("th", title);
        th.setAttribute("scope", "col");
        headRow.appendChild(th);
      });
      table.appendChild(make("thead")).appendChild(headRow);
      var body = table.appendChild(make("tbody"));
      (view.groups || []).forEach(function (group) {
        var tr = make("tr");
        var th = make("th", group.group);
        th.setAttribute("scope", "row");
        tr.appendChild(th);
        var prefix = "coverage." + by + "." + group.group + ".";
        ["targeted", "sent", "failed", "answered"].forEach(function (stage) {
          tr.appendChild(make("td", number(group[stage]), prefix + stage, group[stage]));
        });
        var rate = group.targeted ? group.answered / group.targeted : null;
        tr.appendChild(make("td", percent(rate), prefix + "rate", rate));
        body.appendChild(tr);
      });
      if (!(view.groups || []).length) {
        var empty = make("td", "Nothing yet.");
        empty.colSpan = 6;
        body.appendChild(make("tr")).appendChild(empty);
      }
      wrap.appendChild(table);
      box.appendChild(wrap);
    });
  }

  // ------------------------------------------------------------------ wiring

  ui.keyForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var key = ui.keyInput.value.trim();
    ui.keyInput.value = "";
    if (key) {
      saveKey(key);
      start(key);
    }
  });

  ui.forget.addEventListener("click", function () {
    forgetKey();
    askForKey("Paste the viewer key you were given to open this board.");
  });

  window.addEventListener("hashchange", function () {
    var key = keyFromFragment();
    if (key) {
      saveKey(key);
      start(key);
    }
  });
  window.addEventListener("online", pollSoon);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") {
      pollSoon();
    }
  });

  var given = keyFromFragment();
  if (given) {
    saveKey(given);
  }
  var key = loadKey();
  if (key) {
    start(key);
  } else {
    askForKey("Paste the viewer key you were given to open this board.");
  }
})();
