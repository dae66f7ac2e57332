"""The browser client (reversehttp.js) in a real headless Chromium, and CORS."""
